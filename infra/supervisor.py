"""The stack's process supervisor: supervisord from PyPI, driven through its config file.

Every long-running process of a stack (servers, STS, CA, agents) is a supervisord program
with its log in `<state>/logs/<name>.log`. supervisord listens on a unix socket inside the
state folder only, so two stacks (a user's `make up` and the test suite's) never meet.

Logs may name users and tenants: the logs folder is 0700 and every log file in it 0600
(supervisord runs with umask 077, which its children inherit, so the files it and they
create are private; files left by an older stack are narrowed when the config is written).
"""

from __future__ import annotations

import configparser
import os
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import psutil

from infra.server import Layout, Program, StackError
from infra.waiting import wait_until_blocking

LOG_UMASK = "077"
"""supervisord's umask (inherited by every program): log files 0600, folders 0700."""


class SupervisorError(StackError):
    """supervisord did not do what was asked; see <state>/logs/supervisord.log."""


@dataclass(frozen=True, slots=True)
class ProcessState:
    name: str
    state: str  # RUNNING, STARTING, STOPPED, FATAL, EXITED, BACKOFF
    pid: int | None


def _bin(name: str) -> str:
    # supervisord and supervisorctl are installed beside this interpreter (the venv).
    return str(Path(sys.executable).with_name(name))


class Supervisor:
    """One supervisord per state folder."""

    def __init__(self, layout: Layout) -> None:
        self.layout = layout
        self.conf_path = layout.state_dir / "supervisord.conf"
        self.pid_file = layout.run_dir / "supervisord.pid"
        self.socket = layout.run_dir / "supervisor.sock"

    # -- lifecycle ---------------------------------------------------------------------

    def pid(self) -> int | None:
        """The pid of this stack's running supervisord, None when it is not running.

        A pid file whose process is gone, or now belongs to something else, is stale: it
        is removed so that the next start is not confused by it.
        """
        try:
            pid = int(self.pid_file.read_text().strip())
        except (FileNotFoundError, ValueError):
            return None
        try:
            proc = psutil.Process(pid)
            if (
                proc.status() != psutil.STATUS_ZOMBIE
                and any("supervisord" in part for part in proc.cmdline())
                and str(self.conf_path) in proc.cmdline()
            ):
                return pid
        except psutil.Error:
            pass
        self.pid_file.unlink(missing_ok=True)
        return None

    def is_running(self) -> bool:
        return self.pid() is not None

    def start(self, programs: list[Program]) -> None:
        """Write the config and start supervisord (it daemonizes); programs autostart."""
        self.write_config(programs)
        self.socket.unlink(missing_ok=True)
        result = subprocess.run(
            [_bin("supervisord"), "-c", str(self.conf_path)],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        if result.returncode != 0:
            raise SupervisorError(f"supervisord failed to start: {result.stderr.strip()}")

        def is_up() -> str:
            return "" if self.socket.exists() and self.pid() is not None else "not up"

        if not wait_until_blocking(is_up, timeout_s=10, interval_s=0.05):
            return
        raise SupervisorError(
            f"supervisord did not come up; see {self.layout.logs_dir / 'supervisord.log'}"
        )

    def update(self, programs: list[Program]) -> list[str]:
        """Add or change programs in a running supervisord; returns what changed."""
        self.write_config(programs)
        out = self.ctl("update")
        return [line for line in out.splitlines() if line.strip()]

    def shutdown(self, timeout_s: float = 60) -> list[int]:
        """Stop every program and supervisord itself; returns the pids that were stopped.

        Waits until no process of ours remains; anything that outlives the graceful stop
        is killed, so `down` never leaves a process behind.
        """
        pid = self.pid()
        if pid is None:
            return []
        tree = self._process_tree(pid)
        self.ctl("shutdown", check=False)
        _gone, alive = psutil.wait_procs(tree, timeout=timeout_s)
        for proc in alive:
            try:
                proc.kill()
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(alive, timeout=5)
        self.pid_file.unlink(missing_ok=True)
        self.socket.unlink(missing_ok=True)
        return [p.pid for p in tree]

    @staticmethod
    def _process_tree(pid: int) -> list[psutil.Process]:
        try:
            root = psutil.Process(pid)
            return [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def processes(self) -> list[psutil.Process]:
        """supervisord and every process below it (for tests and `down`)."""
        pid = self.pid()
        return self._process_tree(pid) if pid is not None else []

    # -- control -----------------------------------------------------------------------

    def ctl(self, *args: str, check: bool = True) -> str:
        """Run supervisorctl against this stack's socket."""
        result = subprocess.run(
            [_bin("supervisorctl"), "-c", str(self.conf_path), *args],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        # supervisorctl exits non-zero when a listed program is not RUNNING; callers that
        # only read states pass check=False.
        if check and result.returncode not in (0, 3):
            raise SupervisorError(
                f"supervisorctl {' '.join(args)} failed: {(result.stdout + result.stderr).strip()}"
            )
        return result.stdout

    def states(self) -> dict[str, ProcessState]:
        """The state of every program by name."""
        states: dict[str, ProcessState] = {}
        for line in self.ctl("status", check=False).splitlines():
            parts = line.split()
            if len(parts) < 2:
                continue
            pid = None
            if "pid" in parts:
                try:
                    pid = int(parts[parts.index("pid") + 1].rstrip(","))
                except (IndexError, ValueError):
                    pid = None
            states[parts[0]] = ProcessState(name=parts[0], state=parts[1], pid=pid)
        return states

    def start_program(self, name: str) -> None:
        self.ctl("start", name)

    def stop_program(self, name: str) -> None:
        self.ctl("stop", name)

    # -- config ------------------------------------------------------------------------

    def write_config(self, programs: list[Program]) -> None:
        """Render supervisord.conf for these programs (mode 0600: env may hold secrets)."""
        logs = self.layout.logs_dir
        _make_private(logs)
        self.layout.run_dir.mkdir(parents=True, exist_ok=True)
        conf = configparser.RawConfigParser()
        conf["unix_http_server"] = {"file": str(self.socket), "chmod": "0700"}
        conf["supervisord"] = {
            "pidfile": str(self.pid_file),
            "logfile": str(logs / "supervisord.log"),
            "logfile_maxbytes": "10MB",
            "logfile_backups": "2",
            "directory": str(self.layout.state_dir),
            "childlogdir": str(logs),
            "identifier": f"pta-{self.layout.state_dir}",
            # Its own log, the programs' logs and whatever the programs create: owner only.
            "umask": LOG_UMASK,
            # supervisord warns when it runs as root without this; our programs that
            # must not run as root say so with their own `user=`.
            "user": "root" if os.geteuid() == 0 else "",
        }
        if not conf["supervisord"]["user"]:
            del conf["supervisord"]["user"]
        conf["rpcinterface:supervisor"] = {
            "supervisor.rpcinterface_factory": "supervisor.rpcinterface:make_main_rpcinterface"
        }
        conf["supervisorctl"] = {"serverurl": f"unix://{self.socket}"}
        for prog in programs:
            section: dict[str, str] = {
                # The config file is %-interpolated: a %2F in a URL must be doubled.
                "command": _escape_percent(shlex.join(prog.command)),
                "autostart": "true",
                "autorestart": "unexpected",
                "startsecs": str(prog.start_s),
                "startretries": "3",
                "stopsignal": prog.stop_signal,
                "stopwaitsecs": str(prog.stop_wait_s),
                "stopasgroup": "true",
                "killasgroup": "true",
                "redirect_stderr": "true",
                "stdout_logfile": str(logs / f"{prog.name}.log"),
                "stdout_logfile_maxbytes": "50MB",
                "stdout_logfile_backups": "2",
            }
            if prog.env:
                # supervisord's environment syntax: KEY="value",KEY2="value2"; a % must be
                # doubled because the config file is %-interpolated.
                section["environment"] = ",".join(
                    f'{k}="{_escape(v)}"' for k, v in prog.env.items()
                )
            if prog.user:
                section["user"] = prog.user
            if prog.directory:
                section["directory"] = prog.directory
            conf[f"program:{prog.name}"] = section
        tmp = self.conf_path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            conf.write(f)
        os.replace(tmp, self.conf_path)


def _make_private(logs: Path) -> None:
    """The logs folder 0700 and every file in it 0600 (also those of an older stack).

    supervisord opens its own log before it applies its umask: the file is made here
    first, so it is never created wider.
    """
    logs.mkdir(mode=0o700, parents=True, exist_ok=True)
    logs.chmod(0o700)  # mkdir's mode is narrowed by the umask only, and not applied if it exists
    flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW  # never through a link
    os.close(os.open(logs / "supervisord.log", flags, 0o600))
    for path in logs.iterdir():
        if path.is_file() and not path.is_symlink():
            path.chmod(0o600)


def _escape_percent(value: str) -> str:
    return value.replace("%", "%%")


def _escape(value: str) -> str:
    return _escape_percent(value.replace("\\", "\\\\").replace('"', '\\"'))
