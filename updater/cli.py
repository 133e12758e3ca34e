"""`pta-updater` command line. The update service is not built: the command says so plainly."""

from __future__ import annotations

import sys

import click


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="pta")
def main() -> None:
    """Keep a pass-through authentication agent up to date (not available yet).

    The updater will check the cloud for signed agent releases, install them next to
    the current version and roll back if the agent does not come up healthy.
    """


@main.command()
def check() -> None:
    """Check for a newer agent release (not available in this version)."""
    click.echo("pta-updater: automatic updates are not available in this version", err=True)
    sys.exit(2)
