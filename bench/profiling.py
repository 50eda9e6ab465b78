"""Profiles of the dispatch path and the worker's per-job overhead, with py-spy (from PyPI:
`pip install py-spy`, on PATH or in <data-dir>/tools/bin).

Three recordings, each as collapsed stacks (`--format raw`, loadable in speedscope or
flamegraph.pl) plus a text summary of the functions that hold the most samples:
- worker-wall: the worker's main and pool processes with idle samples (`--idle`): where a job's
  wall time goes, waiting included, over a series of trivial builds;
- worker-cpu: the same without idle samples: what the worker burns CPU on;
- web-cpu: the gunicorn processes while clients create and read jobs.
"""

import collections
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

from bench import apiload
from bench.common import Context, service_build
from bench.repos import TRIVIAL, BuildRepo
from bench.support import REPO_ROOT


def py_spy(ctx: Context) -> str | None:
    found = shutil.which("py-spy")
    local = ctx.root / "tools" / "bin" / "py-spy"
    return found or (str(local) if local.exists() else None)


class Recording:
    def __init__(self, binary: str, pid: int, out: Path, idle: bool, rate: int = 200):
        argv = [binary, "record", "--pid", str(pid), "--subprocesses", "--format", "raw", "--rate", str(rate),
                "--output", str(out), "--nonblocking"]
        if idle:
            argv.append("--idle")
        self.out = out
        self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=open(out.with_suffix(".err"), "wb"))
        time.sleep(1.0)  # py-spy attaches to every process before sampling starts

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


_FRAME = re.compile(r"^(?P<func>.+?) \((?P<file>[^()]*?):(?P<line>\d+)\)$")
OWN_CODE = ("builds/", "hubfly/")


def summarize(raw: Path, within: str = "", top: int = 30) -> str:
    """From py-spy's raw output: the share of samples in each function of our own code
    (inclusive), and the lines where samples ended (self), counting only stacks that pass
    through a frame containing `within` (say, the build task) when it is given."""
    inclusive, leaf, total = collections.Counter(), collections.Counter(), 0
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit() or (within and within not in stack):
            continue
        n = int(count)
        total += n
        frames = [m for m in (_FRAME.match(f) for f in stack.split(";")) if m]
        for name in {f"{m['file']}:{m['func']}" for m in frames if m["file"].startswith(OWN_CODE)}:
            inclusive[name] += n
        if frames:
            leaf[f"{frames[-1]['file']}:{frames[-1]['line']} {frames[-1]['func']}"] += n
    if not total:
        return f"{raw.name}: no samples{' through ' + within if within else ''}\n"
    head = f"{raw.name}: {total} samples" + (f" in stacks through {within!r}" if within else "")
    lines = [head, "", "our code, inclusive:"]
    lines += [f"  {100 * n / total:5.1f}%  {name}" for name, n in inclusive.most_common(top)]
    lines += ["", "where the samples were (self):"]
    lines += [f"  {100 * n / total:5.1f}%  {name}" for name, n in leaf.most_common(top)]
    return "\n".join(lines) + "\n"


def run(ctx: Context) -> None:
    binary = py_spy(ctx)
    if binary is None:
        ctx.note("profile skipped: py-spy not found (pip install py-spy)")
        return
    out = ctx.root / "profiles"
    out.mkdir(parents=True, exist_ok=True)
    repo = BuildRepo(ctx.git, "profile", {"Dockerfile": TRIVIAL})
    service_build(ctx, repo.url, repo.new_commit())
    jobs = ctx.n(4, 25)
    main_pid = min(ctx.instance.worker_pids())  # the main process starts first
    for name, idle in (("worker-wall", True), ("worker-cpu", False)):
        recording = Recording(binary, main_pid, out / f"{name}.txt", idle)
        for _ in range(jobs):
            service_build(ctx, repo.url, repo.new_commit())
        recording.stop()
        _report(ctx, recording.out, within="run_job")
    web_master = min(ctx.instance.web_pids())
    recording = Recording(binary, web_master, out / "web-cpu.txt", idle=False)
    import multiprocessing

    with multiprocessing.get_context("spawn").Pool(8) as pool:
        created = apiload.load(ctx, pool, "create", 8, ctx.n(96, 1000), [], ctx.n(3, 15))["created"]
        apiload.load(ctx, pool, "read", 8, ctx.n(400, 8000), created, ctx.n(3, 15))
    recording.stop()
    _report(ctx, recording.out)
    # The created jobs are pending; cancel them so the worker does not build them.
    for job_id in created:
        ctx.api.request("POST", f"/api/v1/jobs/{job_id}/cancel")


def _report(ctx: Context, raw: Path, within: str = "") -> None:
    if not raw.exists():
        ctx.note(f"py-spy wrote no {raw.name}: {raw.with_suffix('.err').read_text(errors='replace')[-500:]}")
        return
    text = summarize(raw, within) + "\n" + summarize(raw)
    raw.with_suffix(".summary.txt").write_text(text)
    print("\n".join(text.splitlines()[:22]), flush=True)
    shown = raw.relative_to(REPO_ROOT) if raw.is_relative_to(REPO_ROOT) else raw.name
    ctx.note(f"profile {raw.stem}: {shown} and its .summary.txt")
