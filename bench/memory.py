"""Benchmark: the memory of the default local process set, per process, idle and under API load.

Starts the service the README's way (`scripts/run`) once per process set, one after the other
in the same run: `before` is `--memory-before REV`'s checkout (extracted with git archive), or
without it this checkout with bench/procfiles/before.Procfile (web with two workers, a prefork
build worker, a prefork maintenance worker, a separate beat); `after` is this checkout. For each: PSS (proportional set size, /proc/PID/smaps_rollup: shared pages
are split among the processes that share them, so the sum is what the set costs) of every
process of the instance, launchers included (scripts/run's shell, infra.localservices,
honcho and its shells), after a quiet period; then the peak of the sum while 8 clients create
jobs and 8 clients read them (apiload's clients), with the workers running.

The registry and buildkitd are the benchmark's own (bench/support.Infra), so they are not in
the figures; the git and buildctl commands a worker runs for a moment are left out too.
"""

import multiprocessing
import shutil
import subprocess
import sys
import time
from pathlib import Path

from bench.apiload import load
from bench.common import Context
from bench.support import Sampler, cmdline, descendants, is_worker, pss_kb, summary

REPO_ROOT = Path(__file__).resolve().parent.parent


def before_tree(ctx: Context, rev: str) -> Path:
    """The files of `rev` (git archive: the repository is only read), with this interpreter's
    virtualenv, under the benchmark's data directory."""
    commit = subprocess.run(["git", "rev-parse", "--verify", f"{rev}^{{commit}}"], cwd=REPO_ROOT, check=True,
                            capture_output=True, text=True).stdout.strip()
    tree = ctx.root / "trees" / commit[:12]
    if not tree.exists():
        partial = tree.with_name(tree.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        archive = subprocess.run(["git", "archive", commit], cwd=REPO_ROOT, check=True, capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(partial)], input=archive, check=True)
        (partial / ".venv").symlink_to(Path(sys.prefix))
        partial.rename(tree)
    return tree


def variants(ctx: Context) -> dict[str, tuple[Path, dict[str, str]]]:
    """name -> (checkout, extra environment) of the two process sets to compare."""
    rev = getattr(ctx, "memory_before", "")
    if rev:
        before = (before_tree(ctx, rev), {})
    else:
        before = (REPO_ROOT, {"PROCFILE": str(REPO_ROOT / "bench" / "procfiles" / "before.Procfile")})
    return {"before": before, "after": (REPO_ROOT, {})}


def _parent(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return int(fh.read().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return 0


def role(pid: int, line: str) -> str | None:
    """What a process of the instance is, by its command line (None: a passing command)."""
    parent = cmdline(_parent(pid))
    if parent.startswith(("/bin/sh", "sh ")):  # honcho's shell around a process is not its master
        parent = ""
    if "scripts/run" in line:
        return "launcher: scripts/run (bash)"
    if "infra.localservices" in line:
        return "launcher: infra.localservices"
    if "honcho" in line:
        return "launcher: honcho"
    if line.startswith(("/bin/sh", "sh ")):
        return "launcher: honcho's sh -c"
    if "gunicorn" in line:
        return "web: gunicorn worker" if "gunicorn" in parent else "web: gunicorn master"
    if "celery" in line and " beat" in line:
        return "beat"
    if is_worker(line):
        kind = "maintenance worker" if "maintenance" in line else "build worker"
        if is_worker(parent):
            return f"{kind}: pool process"
        return f"{kind}: main"
    return None


def snapshot(root: int) -> dict[str, list[float]]:
    """PSS in MiB of each process of the instance, by role."""
    found: dict[str, list[float]] = {}
    for pid in [root, *descendants(root)]:
        name = role(pid, cmdline(pid))
        if name is not None:
            found.setdefault(name, []).append(pss_kb(pid) / 1024)
    return found


def total(snap: dict[str, list[float]]) -> float:
    return sum(sum(v) for v in snap.values())


def run(ctx: Context, restart) -> None:
    b = "memory"
    seconds = ctx.n(3, 10)
    results = {}
    for variant, (tree, extra) in variants(ctx).items():
        if ctx.instance is not None:  # each set on a database of its own: none works off the other's jobs
            data_dir = ctx.instance.data_dir
            ctx.instance.stop()
            ctx.instance = None
            shutil.rmtree(data_dir, ignore_errors=True)
        restart(extra, tree)
        root = ctx.instance.proc.pid
        time.sleep(ctx.n(3, 10))  # start-up work done, every process idle
        idle = snapshot(root)
        peak = {"total": 0.0, "snap": {}}

        def sample():
            snap = snapshot(root)
            if total(snap) > peak["total"]:
                peak.update(total=total(snap), snap=snap)
            return total(snap)

        rates = {}
        with Sampler(sample, 0.5), multiprocessing.get_context("spawn").Pool(8) as pool:
            created = load(ctx, pool, "create", 8, 100_000, [], seconds)
            rates["create"] = (created["rate"], summary(created["latencies"])["p95"], created["errors"])
            read = load(ctx, pool, "read", 8, 1_000_000, created["created"], seconds)
            rates["read"] = (read["rate"], summary(read["latencies"])["p95"], read["errors"])
        results[variant] = (idle, peak["snap"], rates)
        for kind, (rate, p95, errors) in rates.items():
            print(f"  {variant}: {kind}, 8 clients: {rate:.0f} req/s, p95 {p95:.1f} ms, {errors} errors", flush=True)
        ctx.add(b, f"{variant}: whole set, idle ({sum(len(v) for v in idle.values())} processes)", "MiB PSS",
                total(idle), "<= 300 (after)")
        ctx.add(b, f"{variant}: whole set, peak under API load", "MiB PSS", peak["total"], "<= 450 (after)")
    names = sorted({n for idle, snap, _ in results.values() for n in [*idle, *snap]})
    lines = ["| process (count before / after) | before idle | after idle | before under load | after under load |",
             "|---|---|---|---|---|"]
    for name in names:
        cells = []
        for part in (0, 1):
            for variant in ("before", "after"):
                values = results[variant][part].get(name, [])
                cells.append(f"{sum(values):.1f}" if values else "-")
        counts = " / ".join(str(len(results[v][0].get(name, []))) for v in ("before", "after"))
        lines.append(f"| {name} ({counts}) | {cells[0]} | {cells[1]} | {cells[2]} | {cells[3]} |")
    sums = [f"**{total(results[v][p]):.1f}**" for p in (0, 1) for v in ("before", "after")]
    lines.append(f"| **whole set** | {' | '.join(sums)} |")
    table = "\n".join(lines)
    print(table, flush=True)
    ctx.note("per-process PSS in MiB (under load: the processes at the moment the sum peaked)\n" + table)
