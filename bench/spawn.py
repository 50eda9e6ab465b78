#!/usr/bin/env python3
"""Micro-benchmark behind a profile finding: what starting one command costs a process the size
of a Celery pool process, with a `preexec_fn` (as builds/services/process.py has, to set
PR_SET_PDEATHSIG) versus without one (CPython can then use vfork) and with the parent-death
signal set by `setpriv --pdeathsig KILL` instead.

    .venv/bin/python bench/spawn.py [--rss-mb 120] [--runs 200]
"""

import argparse
import ctypes
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time

_libc = ctypes.CDLL(None, use_errno=True)


def _die_with_parent() -> None:
    _libc.prctl(1, signal.SIGKILL, 0, 0, 0)


def spawn(argv: list[str], preexec) -> None:
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")}, start_new_session=True,
                            preexec_fn=preexec, close_fds=True)
    proc.stdout.read()
    proc.wait()


def measure(label: str, runs: int, argv: list[str], preexec) -> None:
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        spawn(argv, preexec)
        times.append((time.perf_counter() - t) * 1000)
    print(f"{label:45s} median {statistics.median(times):6.2f} ms  min {min(times):6.2f}  max {max(times):7.2f}")


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rss-mb", type=int, default=120, help="memory to touch first, like a pool process")
    parser.add_argument("--runs", type=int, default=200)
    args = parser.parse_args()
    ballast = [bytearray(1024 * 1024) for _ in range(args.rss_mb)]  # noqa: F841 (resident pages)
    for block in ballast:
        block[::4096] = b"x" * len(block[::4096])
    true = shutil.which("true")
    print(f"{os.cpu_count()} cores, load average {' '.join(open('/proc/loadavg').read().split()[:3])}, "
          f"~{args.rss_mb} MB resident, {args.runs} runs of `true`")
    measure("preexec_fn=prctl(PDEATHSIG) (fork)", args.runs, [true], _die_with_parent)
    measure("no preexec_fn (vfork)", args.runs, [true], None)
    setpriv = shutil.which("setpriv")
    if setpriv:
        measure("setpriv --pdeathsig KILL -- true (vfork)", args.runs, [setpriv, "--pdeathsig", "KILL", "--", true], None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
