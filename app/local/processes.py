"""Child processes as `taas up` runs them (and the tests and benchmarks that start the service's processes): each in
a session of its own (a Ctrl-C in the terminal reaches only its parent), its output in a log file, stopped with a
signal and, past a grace period, killed with everything it left in its session."""

import os
import signal as signals
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

POLL_SECONDS = 0.2


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


def port_is_free(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
        return True


def _die_with_parent(sig: int) -> Callable[[], None]:
    """For the child, before exec: get `sig` if its parent dies (Linux), so nothing is orphaned."""

    def preexec() -> None:
        if sys.platform.startswith("linux"):
            import ctypes

            PR_SET_PDEATHSIG = 1
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, sig)

    return preexec


@dataclass
class Child:
    name: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def alive(self) -> bool:
        return self.process.poll() is None

    def signal(self, sig: int, *, group: bool = False) -> None:
        try:
            if group:
                os.killpg(self.process.pid, sig)
            else:
                self.process.send_signal(sig)
        except ProcessLookupError:
            pass

    def stop(self, sig: int = signals.SIGTERM, timeout: float = 20) -> int:
        """Signal the child (and its session) and wait; kill them if it does not exit in time."""
        if self.alive():
            self.signal(sig, group=True)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.signal(signals.SIGKILL, group=True)
                self.process.wait(10)
        return self.process.returncode

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.log().splitlines()[-lines:])


def spawn(name: str, args: Sequence[str], *, cwd: Path, env: Mapping[str, str], log_path: Path, append: bool = False,
          parent_death_signal: int | None = None) -> Child:
    """Start `args` as a child in a session of its own, its output (stdout and stderr) in log_path."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab" if append else "wb") as out:
        if append:
            out.write(f"\n===== starting {name} at {time.ctime()} =====\n".encode())
            out.flush()
        process = subprocess.Popen(
            list(args), cwd=cwd, env=dict(env), stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_die_with_parent(parent_death_signal) if parent_death_signal is not None else None)
    return Child(name, process, log_path)


def wait_exit(children: list[Child], timeout: float) -> bool:
    """Whether every child exited within `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while any(c.alive() for c in children):
        if time.monotonic() > deadline:
            return False
        time.sleep(POLL_SECONDS)
    return True
