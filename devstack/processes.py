"""Daemons that outlive the command that started them: spawn, identify, probe ports, stop.

`keyrelay dev up` starts each daemon in a session of its own (so Ctrl-C in the terminal does not
reach it, and it survives the command's exit) and records its pid with the process's start time;
`dev status` and `dev down` find it again from another process. The start time guards against a
recycled pid: a pid whose start time differs is some other program and is never signalled.
"""

from __future__ import annotations

import errno
import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class ProcessId:
    """A process as recorded in the state file: pid plus its start time in clock ticks since boot."""

    pid: int
    start_time: int

    def alive(self) -> bool:
        """True if this very process (not a later one with the same pid) is running."""
        return _start_time(self.pid) == self.start_time and not _is_zombie(self.pid)


def _stat_fields(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after its last ')'.
    return text[text.rindex(")") + 2 :].split()


def _start_time(pid: int) -> int | None:
    fields = _stat_fields(pid)
    return int(fields[19]) if fields else None  # field 22 of /proc/PID/stat


def _is_zombie(pid: int) -> bool:
    fields = _stat_fields(pid)
    if fields is None:
        return True
    if fields[0] == "Z":
        _reap(pid)
        return True
    return False


def _reap(pid: int) -> None:
    """Collect the exit status if the process is our child (in tests dev up may run in-process)."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def spawn(argv: list[str], env: dict[str, str], log_path: Path) -> tuple[subprocess.Popen, ProcessId]:
    """Start `argv` detached from this terminal, appending its output to `log_path`."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            argv, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    start = None
    for _ in range(100):  # /proc/PID appears with the fork; only a failed exec makes it vanish
        start = _start_time(proc.pid)
        if start is not None:
            break
        time.sleep(0.01)
    return proc, ProcessId(proc.pid, start or -1)


def terminate(process: ProcessId, timeout: float) -> str:
    """SIGTERM the process, wait up to `timeout` seconds, then SIGKILL; says what happened."""
    if not process.alive():
        return "not running"
    started = time.monotonic()
    try:
        os.kill(process.pid, signal.SIGTERM)
    except ProcessLookupError:
        return "not running"
    while time.monotonic() - started < timeout:
        if not process.alive():
            return f"stopped ({time.monotonic() - started:.1f}s after SIGTERM)"
        time.sleep(0.05)
    try:
        os.kill(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        return f"stopped ({time.monotonic() - started:.1f}s after SIGTERM)"
    while process.alive():
        time.sleep(0.05)
    return f"killed (still running {timeout:g}s after SIGTERM; see its log)"


def port_in_use(host: str, port: int) -> bool:
    """True if something listens on host:port. SO_REUSEADDR, as the daemons set it, so that a port
    still in TIME_WAIT after `dev down` counts as free."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                return True
            raise
    return False


def log_tail(path: Path, lines: int = 12) -> str:
    """The last lines of a log file, indented, for an error message ('' if there is none)."""
    try:
        text = path.read_text(errors="replace").rstrip("\n").splitlines()
    except OSError:
        return ""
    return "\n".join("    " + line for line in text[-lines:])
