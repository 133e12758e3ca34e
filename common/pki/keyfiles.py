"""Private key files: the one atomic, exact-mode writer, and a reader that refuses a key
file others can read. The only I/O in the package."""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
from pathlib import Path

from common.pki.errors import KeyFileExists, KeyFileExposed
from common.pki.keys import PrivateKey, load_private_key_pem, private_key_pem


def write_private_key(
    path: str | os.PathLike[str], key: PrivateKey, *, overwrite: bool = False
) -> None:
    """Write a private key as PEM with mode 0600, atomically: the only key writer.

    The key goes to a fresh temporary file in the same directory, created with
    ``O_CREAT | O_EXCL`` and mode 0600 (so it is never readable by others, not even
    briefly), is fsynced, then published under ``path``. By default publication uses
    ``link()``, which fails if ``path`` exists, so an existing key is never clobbered;
    ``overwrite=True`` (key rotation at renewal) uses ``rename()``, which replaces it
    atomically: readers see the old key or the new one, never a partial file.

    Raises KeyFileExists when ``path`` exists and ``overwrite`` is false; OSError for
    other file system failures. The temporary file is removed on any failure.
    """
    target = Path(path)
    tmp = target.with_name(f".{target.name}.{secrets.token_hex(8)}.tmp")
    data = private_key_pem(key)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
    fd = os.open(tmp, flags, 0o600)
    try:
        with os.fdopen(fd, "wb") as handle:
            os.fchmod(handle.fileno(), 0o600)  # the umask can only narrow; make it exact
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        if overwrite:
            os.replace(tmp, target)
        else:
            try:
                os.link(tmp, target)  # atomic create-if-absent, unlike rename()
            except FileExistsError as exc:
                raise KeyFileExists(str(target)) from exc
            os.unlink(tmp)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_directory(target.parent)


def read_private_key(path: str | os.PathLike[str]) -> PrivateKey:
    """Read a private key file written by ``write_private_key``.

    Raises KeyFileExposed when group or others may access the file (like ssh does),
    PemInvalid when it holds no usable key, OSError when it cannot be read.
    """
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    with os.fdopen(fd, "rb") as handle:
        mode = os.fstat(handle.fileno()).st_mode
        if stat.S_IMODE(mode) & 0o077:
            raise KeyFileExposed(f"{os.fspath(path)} has mode {stat.S_IMODE(mode):04o}.")
        data = handle.read()
    return load_private_key_pem(data)


def _fsync_directory(directory: Path) -> None:
    """Persist a rename: the directory entry must reach the disk too."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
