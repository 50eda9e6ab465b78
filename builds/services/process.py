"""The one way external commands (git, buildctl) are run.

argv lists only, an explicit environment, a new process group, output (stdout and stderr
together) streamed line by line into the job log as it arrives, and a wake-up several times a
second to renew the lease, notice a cancel, and enforce the deadline. On any exit the whole
process group is killed, and the kernel kills the command if the worker process dies
(PR_SET_PDEATHSIG), so no orphan keeps building a job that another worker will take.

The parent-death signal follows the *thread* that started the command, not the process: run()
starts the command and waits for it in the same call, so in a threads pool (the Procfile's) the
starting thread outlives the command, and a command never runs beyond the call that owns it.
"""

import ctypes
import os
import select
import shutil
import signal
import subprocess
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from builds.errors import BuildCanceled, BuildTimedOut, LeaseLost

_PR_SET_PDEATHSIG = 1
_MAX_LINE = 16 * 1024
# Process groups of the commands running in this process, for kill_all_groups().
_active_groups: set[int] = set()

try:
    _libc = ctypes.CDLL(None, use_errno=True)
except OSError:  # pragma: no cover - non-glibc platforms
    _libc = None


def set_parent_death_signal(signum: int) -> None:
    """The signal this process gets when the thread that started it exits (0: none)."""
    if _libc is not None:
        _libc.prctl(_PR_SET_PDEATHSIG, signum, 0, 0, 0)


def _die_with_parent() -> None:
    set_parent_death_signal(signal.SIGKILL)


# setpriv (util-linux) sets the parent-death signal and execs the command. Without a
# preexec_fn, CPython can start commands with vfork instead of copying the page tables of a
# large pool process: about 2 ms instead of 11 per command (bench/RESULTS.md, fix 1).
_SETPRIV = shutil.which("setpriv")


def _launch(argv: list[str]) -> tuple[list[str], Callable[[], None] | None]:
    if _SETPRIV:
        return [_SETPRIV, "--pdeathsig", "KILL", "--", *argv], None
    return argv, _die_with_parent


@dataclass
class Guard:
    """Checks made while a step runs: the deadline, and every `interval` seconds a heartbeat
    that returns False when the job was canceled or taken away (`is_canceled` tells which)."""

    deadline: float  # time.monotonic() value
    heartbeat: Callable[[], bool] = lambda: True
    is_canceled: Callable[[], bool] = lambda: False
    interval: float = 3.0
    _next_beat: float = field(default=0.0, init=False)

    def check(self) -> None:
        now = time.monotonic()
        if now >= self.deadline:
            raise BuildTimedOut("the job exceeded its timeout")
        if now >= self._next_beat:
            self._next_beat = now + self.interval
            if not self.heartbeat():
                if self.is_canceled():
                    raise BuildCanceled("canceled")
                raise LeaseLost("the job's lease was lost")

    def seconds_left(self) -> float:
        return self.deadline - time.monotonic()


@dataclass
class Result:
    returncode: int
    tail: list[str]  # the last lines of output, for error messages


def run(
    argv: list[str],
    *,
    guard: Guard,
    env: dict[str, str],
    line: Callable[[str], None],
    tick: Callable[[], None] = lambda: None,
    cwd: str | None = None,
    grace_seconds: float = 5.0,
    tail_lines: int = 40,
) -> Result:
    """Run argv to completion, feeding each output line to `line`; `tick` runs on every wake-up.
    Raises BuildTimedOut / BuildCanceled after stopping the process group (SIGINT, then SIGKILL
    after `grace_seconds`), LeaseLost after killing it at once."""
    tail: deque[str] = deque(maxlen=tail_lines)

    def emit(raw: bytes) -> None:
        text = raw.decode("utf-8", "replace").rstrip("\r")
        tail.append(text)
        line(text)

    command, preexec = _launch(argv)
    proc = subprocess.Popen(
        command,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=env,
        cwd=cwd,
        start_new_session=True,
        preexec_fn=preexec,
        close_fds=True,
    )
    pgid = proc.pid
    _active_groups.add(pgid)
    fd = proc.stdout.fileno()
    pending = b""
    try:
        guard.check()
        while True:
            ready, _, _ = select.select([fd], [], [], 0.2)
            if ready:
                data = os.read(fd, 65536)
                if not data:
                    break
                pending += data
                *complete, pending = pending.split(b"\n")
                for raw in complete:
                    emit(raw)
                while len(pending) > _MAX_LINE:  # never let one endless line stall the reader
                    emit(pending[:_MAX_LINE])
                    pending = pending[_MAX_LINE:]
            tick()
            guard.check()
        if pending:
            emit(pending)
        while True:  # output closed; the command may still be finishing
            try:
                proc.wait(timeout=0.2)
                break
            except subprocess.TimeoutExpired:
                tick()
                guard.check()
        return Result(proc.returncode, list(tail))
    except LeaseLost:
        # Another attempt owns the job: no grace (a stopped command would not act on SIGINT
        # anyway), the group is killed in the `finally` below, within one heartbeat of the loss.
        raise
    except (BuildTimedOut, BuildCanceled):
        _stop(proc, pgid, grace_seconds, emit)
        raise
    finally:
        _kill_group(pgid)
        _active_groups.discard(pgid)
        proc.stdout.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _stop(proc: subprocess.Popen, pgid: int, grace_seconds: float, emit: Callable[[bytes], None]) -> None:
    """SIGINT first (buildctl then cancels the solve on the daemon), SIGKILL after the grace."""
    try:
        os.killpg(pgid, signal.SIGINT)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace_seconds
    fd = proc.stdout.fileno()
    while time.monotonic() < deadline and proc.poll() is None:
        ready, _, _ = select.select([fd], [], [], 0.1)
        if ready:
            data = os.read(fd, 65536)
            for raw in data.splitlines():
                emit(raw)
    _kill_group(pgid)
    proc.wait()


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def kill_all_groups() -> None:
    """Stop every command this process started (used when the worker's main process is gone)."""
    for pgid in list(_active_groups):
        _kill_group(pgid)
