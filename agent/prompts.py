"""How ``pta-agent`` asks a person for credentials: the sign-in method the options choose,
a password from standard input (never echoed, never from the command line), the device
code shown on standard error. Usage mistakes raise ``click.UsageError`` (exit code 2).
"""

from __future__ import annotations

import getpass
import sys

import click

from agent.signin import DeviceCode, DeviceCodeLogin, Login, PasswordLogin


def login_method(device_code: bool, username: str | None, password_stdin: bool) -> Login:
    """The sign-in method the options ask for; reads the password before any network."""
    if device_code and (username is not None or password_stdin):
        raise click.UsageError(
            "--device-code and --username/--password-stdin are two ways to sign in: use one."
        )
    if password_stdin and username is None:
        raise click.UsageError("--password-stdin needs --username (the admin's UPN).")
    if username is not None and not password_stdin:
        raise click.UsageError(
            "--username needs --password-stdin: the password is read from standard input, "
            "never from the command line."
        )
    if username is not None:
        return PasswordLogin(username=username, password=read_password())
    return DeviceCodeLogin(show=show_device_code)


def read_password(source: str = "--password-stdin") -> str:
    """One password from standard input: prompted without echo on a terminal, else the
    first line. ``source`` names the option or command in the usage error."""
    stream = sys.stdin
    if stream.isatty():
        password = getpass.getpass("Password: ")  # no echo; prompts on the terminal
    else:
        password = stream.readline().removesuffix("\n").removesuffix("\r")
    if not password:
        raise click.UsageError(f"{source}: standard input held no password.")
    return password


def show_device_code(device: DeviceCode) -> None:
    """Tell the person where to enter the code, and how long it lasts."""
    click.echo(device.message, err=True)
    minutes = max(1, round(device.expires_in_s / 60))
    click.echo(f"Waiting for the sign-in (the code expires in {minutes} min)...", err=True)
