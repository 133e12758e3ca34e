"""The stack user and its data folder, outside the checkout.

initdb and postgres refuse to run as root (docs/servers.md), so as root PostgreSQL runs as
the unprivileged system user `ptastack`, created on first use. That user must reach every
file the server opens, and a checkout in a private folder (root's home is 0700, so is a
`mktemp -d`) is out of its reach. Rather than widen the checkout's modes or add ACLs
(which some filesystems lack), the server's data lives in a folder of its own, outside the
checkout, under a root-owned base::

    /var/lib/pta-stack/           root, 0711 (another base: PTA_STACK_DATA_ROOT)
        <checkout>-<random>/      root, 0711: one per state folder
            owner.json            root, 0600: the state folder it belongs to
            postgres/             ptastack, 0700: data/ and run/ (the unix socket)

`<state>/layout.json` records the folder ("stack_user_dir"). `down` keeps it, so the
next `up` runs the same cluster; `pta-stack down --purge` deletes it with the state
folder. Every folder root creates in it sits in a root-owned parent, so the stack user
cannot swap one for a symlink before root changes its owner.

Slapd and RabbitMQ run as the invoking user and keep their data in the state folder.
"""

from __future__ import annotations

import json
import os
import pwd
import re
import secrets
import shutil
import stat
import subprocess
from pathlib import Path

import psutil

from infra.server import StackError

OS_USER = "ptastack"
DEFAULT_ROOT = Path("/var/lib/pta-stack")
OWNER_FILE = "owner.json"


class StackUserCannotWrite(StackError):
    """The stack user cannot use its data folder, so PostgreSQL could not start.

    Put the folder on a local filesystem the stack user may enter (every parent
    traversable by it, not an NFS export with root_squash), or choose another base with
    PTA_STACK_DATA_ROOT=<folder> (pta-stack up --data-root), then run `make up` again.
    """


def _message(error: type[StackError]) -> str:
    """An error class's docstring as one line (the default message, docs/contributing.md §5)."""
    return " ".join((error.__doc__ or "").split())


def ensure_os_user() -> pwd.struct_passwd:
    """The stack user's passwd entry, creating the system user when it is missing."""
    try:
        return pwd.getpwnam(OS_USER)
    except KeyError:
        subprocess.run(
            ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", OS_USER],
            check=True,
            capture_output=True,
            timeout=30,
        )
        return pwd.getpwnam(OS_USER)


def as_stack_user() -> list[str]:
    """The command prefix that runs a program as the stack user (root only)."""
    return ["setpriv", f"--reuid={OS_USER}", f"--regid={OS_USER}", "--init-groups"]


def choose(root: Path, state_dir: Path) -> Path:
    """A new, unused folder name under root for this state folder (not created yet).

    Named after the checkout so that an operator listing the base sees whose it is.
    """
    hint = state_dir.parent.name if state_dir.name == ".stack" else state_dir.name
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", hint).strip(".-")[:40] or "stack"
    return root / f"{slug}-{secrets.token_hex(4)}"


def _owner(folder: Path) -> dict[str, object] | None:
    try:
        data: dict[str, object] = json.loads((folder / OWNER_FILE).read_text())
    except (OSError, ValueError):
        return None
    return data


def _write_owner(folder: Path, state_dir: Path, *, durable: bool) -> None:
    tmp = folder / f"{OWNER_FILE}.tmp"
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump({"state_dir": str(state_dir), "durable": durable}, f)
        f.write("\n")
    os.replace(tmp, folder / OWNER_FILE)


def _refers_to(state_dir: Path, folder: Path) -> bool:
    """True when state_dir's layout.json records folder as its stack user folder."""
    try:
        layout = json.loads((state_dir / "layout.json").read_text())
    except (OSError, ValueError):
        return False
    recorded: object = layout.get("stack_user_dir")
    return recorded == str(folder)


def check_state_dir_is_roots(state_dir: Path) -> None:
    """As root, refuse a state folder that another user owns or may write.

    Root reads paths from it (`layout.json`'s `stack_user_dir`, which it later deletes with
    `down --purge`), writes into it (logs that supervisord appends to as root) and runs
    what it configures: a folder another user controls would let that user point root at
    any file. `pta-stack up` as root creates the folder itself (root's, 0700).
    """
    try:
        st = state_dir.lstat()
    except FileNotFoundError:
        return
    if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode):
        raise StackError(f"{state_dir} must be a folder, not a link or a file")
    if st.st_uid != 0 or st.st_mode & 0o022:
        raise StackError(
            f"{state_dir} belongs to uid {st.st_uid} (mode {stat.S_IMODE(st.st_mode):o}); as "
            f"root, the stack runs only from a state folder owned by root that only root may "
            f"write: `chown -R root: {state_dir} && chmod go-w {state_dir}`, or remove it "
            f"and run `pta-stack up` again"
        )


def _ensure_root_owned_dir(path: Path, mode: int) -> None:
    """Create path (root, mode) or check that it is a root-owned folder nobody else writes."""
    try:
        path.mkdir(mode=mode)
        path.chmod(mode)  # the umask may have narrowed it
    except FileExistsError:
        pass
    except OSError as exc:
        raise StackUserCannotWrite(
            f"cannot create {path} ({exc}). {_message(StackUserCannotWrite)}"
        ) from exc
    st = path.lstat()
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != 0 or st.st_mode & 0o022:
        raise StackError(
            f"{path} must be a folder owned by root that only root may write "
            f"(found uid {st.st_uid}, mode {stat.S_IMODE(st.st_mode):o}); "
            f"remove it, or choose another base with PTA_STACK_DATA_ROOT=<folder>"
        )


def prepare(folder: Path, state_dir: Path, *, durable: bool) -> None:
    """Create the stack user's folder (idempotent) and prove the stack user can write it.

    Raises StackUserCannotWrite, naming the folder, before any server starts. Also
    removes what crashed test runs left behind (see `collect_orphans`).
    """
    user = ensure_os_user()
    _ensure_root_owned_dir(folder.parent, 0o711)
    collect_orphans(folder.parent)
    is_new = not folder.exists()
    _ensure_root_owned_dir(folder, 0o711)
    owner = _owner(folder)
    if owner is None and not is_new and any(folder.iterdir()):
        raise StackError(
            f"{folder} (recorded in {state_dir / 'layout.json'}) is not a stack data folder "
            f"(it has no {OWNER_FILE}); remove the stack_user_dir line from layout.json"
        )
    if owner is not None and owner.get("state_dir") != str(state_dir):
        other = Path(str(owner.get("state_dir")))
        if _refers_to(other, folder):
            raise StackError(
                f"{folder} holds the data of the stack in {other}, and {state_dir} was "
                f"copied from it; start the copy afresh with `pta-stack down --purge "
                f"--state-dir {state_dir}` (the other stack's data is left alone)"
            )
    # A moved state folder takes its data along: it now owns the folder.
    _write_owner(folder, state_dir, durable=durable)
    postgres = folder / "postgres"
    try:
        postgres.mkdir(mode=0o700)
    except FileExistsError:
        pass
    # lchown: never follow a link, though none can appear in a root-owned parent.
    os.chown(postgres, user.pw_uid, user.pw_gid, follow_symlinks=False)
    postgres.chmod(0o700, follow_symlinks=False)
    # The stack user makes its socket folder itself: that is the proof it can write.
    try:
        _probe(folder / "postgres")
    except StackUserCannotWrite:
        if not has_cluster(folder):
            shutil.rmtree(folder, ignore_errors=True)  # so another data root can be chosen
        raise


def has_cluster(folder: Path) -> bool:
    """True when the stack user's folder holds a PostgreSQL cluster."""
    return (folder / "postgres" / "data" / "PG_VERSION").exists()


def _probe(postgres: Path) -> None:
    probe = subprocess.run(
        [*as_stack_user(), "mkdir", "-p", "-m", "0700", "--", str(postgres / "run")],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        cwd="/",
    )
    if probe.returncode != 0:
        raise StackUserCannotWrite(
            f"the stack user {OS_USER} cannot write {postgres} "
            f"({probe.stderr.strip() or f'exit {probe.returncode}'}). "
            f"{_message(StackUserCannotWrite)}"
        )


def remove(folder: Path, state_dir: Path) -> bool:
    """Delete the stack user's folder of state_dir; False when it belongs to another stack."""
    if not folder.exists():
        return True
    owner = _owner(folder)
    st = folder.lstat()
    if (
        owner is None
        or owner.get("state_dir") != str(state_dir)
        or not stat.S_ISDIR(st.st_mode)
        or st.st_uid != 0
    ):
        return False  # not this stack's data folder: never delete what is not ours
    shutil.rmtree(folder)  # fd-based: safe against links planted inside
    return True


def _postgres_running(folder: Path) -> bool:
    try:
        pid = int((folder / "postgres" / "data" / "postmaster.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return False
    return bool(psutil.pid_exists(pid))


def collect_orphans(root: Path) -> list[Path]:
    """Remove throwaway stacks' folders whose state folder is gone; returns them.

    A test run that was killed leaves its data behind (`--ephemeral` stacks). A durable
    stack's folder is never removed here: its state folder may only have moved.
    """
    removed = []
    try:
        entries = list(root.iterdir())
    except OSError:
        return []
    for folder in entries:
        owner = _owner(folder)
        if owner is None or owner.get("durable", True):
            continue
        if _refers_to(Path(str(owner.get("state_dir"))), folder) or _postgres_running(folder):
            continue
        shutil.rmtree(folder, ignore_errors=True)
        removed.append(folder)
    return removed
