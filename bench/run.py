#!/usr/bin/env python3
"""Benchmarks of hubfly-builder's own overhead (issue 6), against a live instance.

Starts everything itself: a registry and a buildkitd of its own (kept between instance
restarts), the test suite's smart-HTTP git server and a callback receiver in this process, and
the service the README's way (`scripts/run`: web, worker, beat) with its own DATA_DIR, PORT and
CALLBACK_URL. Runs the selected benchmarks, prints median/min/max (p50/p95 where asked) with
the machine's core count, and stops everything it started.

    .venv/bin/python bench/run.py                 # everything, full counts
    .venv/bin/python bench/run.py --short         # tiny counts, well under 2 minutes (CI)
    .venv/bin/python bench/run.py --only dispatch,overhead --profile

State lives under --data-dir (default data/bench): the registry, buildkitd's cache, the
generated long-history repository and the results; each run starts with a fresh instance.
"""

import argparse
import importlib
import json
import os
import shutil
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

# Run in this order; api leaves the instance's worker stopped, and faults (which restarts the
# instance with short leases) comes after it so no other figure runs on those settings.
BENCHES = ("git", "fairqueue", "dispatch", "overhead", "attest", "isolation", "rebuild", "profile", "throughput",
           "webvariants", "api", "wrk", "memory", "faults")
DEFAULT = ("git", "fairqueue", "dispatch", "overhead", "attest", "isolation", "rebuild", "throughput", "api", "memory",
           "faults")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--short", action="store_true", help="tiny counts, so CI can run every benchmark")
    parser.add_argument("--only", default="", help=f"comma-separated subset of {','.join(BENCHES)}")
    parser.add_argument("--profile", action="store_true", help="also record py-spy profiles (needs py-spy)")
    parser.add_argument("--app", choices=("auto", "node", "simulated"), default="auto",
                        help="the rebuild benchmark's app (auto: node, simulated with --short)")
    parser.add_argument("--data-dir", type=Path, default=REPO_ROOT / "data" / "bench")
    parser.add_argument("--broker-poll", type=float, help="BROKER_POLL_SECONDS for the instance (default: its own)")
    parser.add_argument("--database-url", help="DATABASE_URL for the instance (the scale-out configuration)")
    parser.add_argument("--broker-url", help="CELERY_BROKER_URL for the instance (the scale-out configuration)")
    parser.add_argument("--scaleout", action="store_true",
                        help="start PostgreSQL and Redis here and run the instance on them (as tests/scaleout)")
    parser.add_argument("--slots", type=int, help="MAX_CONCURRENT_BUILDS of the main instance (default: its own)")
    parser.add_argument("--base-images", choices=("auto", "yes", "no"), default="auto",
                        help="push the Debian base image for builds that need it (auto: yes, with --short "
                             "only if it is cached already)")
    parser.add_argument("--patch-vfork", action="store_true",
                        help="experiment: start the worker's commands via setpriv, without preexec_fn (bench/patches)")
    parser.add_argument("--memory-before", default="", metavar="REV",
                        help="memory: measure the process set of this git revision beside this checkout's "
                             "(default: this checkout with bench/procfiles/before.Procfile)")
    parser.add_argument("--json", type=Path, help="also write the figures as JSON here")
    args = parser.parse_args(argv)
    chosen = [b.strip() for b in args.only.split(",") if b.strip()] or list(DEFAULT)
    unknown = set(chosen) - set(BENCHES)
    if unknown:
        parser.error(f"unknown benchmark(s): {', '.join(sorted(unknown))}")
    if args.profile and "profile" not in chosen:
        chosen.append("profile")
    args.benches = [b for b in BENCHES if b in chosen]
    return args


def base_images_wanted(args) -> bool:
    if args.base_images != "auto":
        return args.base_images == "yes"
    if not args.short:
        return True
    from tests.support.baseimages import default_cache_dir

    layers = default_cache_dir() / "layers"
    return any(layers.glob("debian-*.json")) and any(layers.glob("dockerfile-frontend-*.json"))


MODULES = {"git": "gitfetch", "fairqueue": "fairqueue", "dispatch": "dispatch", "overhead": "overhead",
           "attest": "attestations", "isolation": "isolation",
           "rebuild": "rebuild",
           "profile": "profiling", "throughput": "throughput", "webvariants": "webvariants", "api": "apiload", "wrk": "apiwrk",
           "memory": "memory", "faults": "faults"}
NO_INSTANCE = ("git", "fairqueue", "webvariants", "wrk")  # these start what they measure themselves
INFRA_ONLY = ("isolation",)  # these use the registry and buildkitd, not the service
RESTARTING = ("throughput", "faults", "memory", "attest")  # these start the instance with settings of their own


def instance_env(args) -> dict[str, str]:
    env = {}
    if args.broker_poll:
        env["BROKER_POLL_SECONDS"] = str(args.broker_poll)
    if args.slots:
        env["MAX_CONCURRENT_BUILDS"] = str(args.slots)
    if args.patch_vfork:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT / "bench" / "patches"),
                                                          os.environ.get("PYTHONPATH", "")]))
        env["HUBFLY_BENCH_VFORK"] = "1"
    if args.database_url:
        env["DATABASE_URL"] = args.database_url
    if args.broker_url:
        env["CELERY_BROKER_URL"] = args.broker_url
    return env


def main(argv=None) -> int:
    args = parse_args(argv)
    from bench import support
    from bench.common import Context
    from bench.support import Infra, Instance, Receiver
    from tests.support.gitserver import GitServer

    root = args.data_dir.resolve()
    run_dir = root / "run"
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    started = time.monotonic()
    print(f"bench: {', '.join(args.benches)}{' (short)' if args.short else ''}; {support.machine_line()}", flush=True)

    infra = Infra(root / "infra")
    receiver = Receiver()
    git_server = GitServer(run_dir / "git")
    ctx = Context(short=args.short, root=root, infra=infra, receiver=receiver, git=git_server, base_images=False)
    ctx.memory_before = args.memory_before
    servers = []
    if args.scaleout:
        from tests.support import scaleout

        shutil.rmtree(root / "scaleout", ignore_errors=True)
        args.database_url, ctx.postgres = scaleout.start_postgres(root / "scaleout" / "postgres")
        args.broker_url, redis = scaleout.start_redis(root / "scaleout" / "redis")
        servers.append(redis)
        print("bench: scale-out configuration: PostgreSQL and Redis", flush=True)
    base_env = instance_env(args)
    current: dict = {"env": None}

    def restart(extra: dict | None = None, tree: Path = REPO_ROOT) -> None:
        """(Re)start the instance unless it already runs with this environment (and checkout)."""
        env = {"MAX_CONCURRENT_BUILDS": "3", **base_env, **(extra or {})}  # 3: the service's default
        if ctx.instance is not None and current["env"] == env and ctx.instance.tree == tree:
            return
        if ctx.instance is not None:
            ctx.instance.stop()
        t = time.monotonic()
        ctx.instance = Instance(data_dir=run_dir / "instance", infra=infra, callback_url=receiver.url, env=env,
                                tree=tree)
        ctx.instance.start()
        current["env"] = env
        shown = ", ".join(f"{k}={v}" for k, v in env.items() if not k.endswith(("_URL", "PATH")))
        print(f"bench: instance up ({shown}) on port {ctx.instance.port} in {time.monotonic() - t:.1f} s", flush=True)

    try:
        if any(b not in NO_INSTANCE for b in args.benches):
            ctx.base_images = base_images_wanted(args)
            t = time.monotonic()
            infra.start(ctx.base_images)
            print(f"bench: registry {infra.registry_addr} and buildkitd up"
                  f"{' with base images' if ctx.base_images else ''} in {time.monotonic() - t:.1f} s", flush=True)
        else:
            infra.registry_addr, infra.buildkit_addr = "127.0.0.1:9", "unix:///nonexistent"
        # Django settings for this process, as the instance sees them, so the benchmarks can use
        # the service's own argv builders (buildctl command, git fetcher, image names).
        probe = Instance(data_dir=run_dir / "instance", infra=infra, callback_url=receiver.url, env=base_env)
        os.environ.update({k: v for k, v in probe.environment().items() if k != "PORT"})
        os.environ.setdefault("DJANGO_SETTINGS_MODULE", "hubfly.settings")
        import django

        django.setup()
        for name in args.benches:
            t = time.monotonic()
            print(f"\n== {name} ==  (load average {support.load_average()})", flush=True)
            if name not in NO_INSTANCE + INFRA_ONLY + RESTARTING and ctx.instance is None:
                restart()
            module = importlib.import_module(f"bench.{MODULES[name]}")
            if name == "rebuild":
                module.run(ctx, args.app)
            elif name in RESTARTING:
                module.run(ctx, restart)
            else:
                module.run(ctx)
            print(f"== {name}: {time.monotonic() - t:.1f} s", flush=True)
    finally:
        if ctx.instance is not None:
            ctx.instance.stop()
        infra.stop()
        git_server.httpd.shutdown()
        shutil.rmtree(run_dir / "git", ignore_errors=True)
        receiver.close()
        if ctx.postgres is not None:
            servers.append(ctx.postgres)
        if servers:
            from tests.support import scaleout

            for server in servers:
                scaleout.stop(server)
    report(ctx, args, root, time.monotonic() - started, argv)
    return 0


def report(ctx, args, root: Path, seconds: float, argv) -> None:
    from bench.support import format_table, machine_line

    table = format_table(ctx.figures)
    header = f"{machine_line()}; total {seconds:.0f} s; command: bench/run.py {' '.join(argv or sys.argv[1:])}"
    print(f"\n{header}\n\n{table}")
    for note in ctx.notes:
        print(f"- {note}")
    stamp = time.strftime("%Y%m%d-%H%M%S")
    (root / f"results-{stamp}.md").write_text(f"{header}\n\n{table}\n\n" + "".join(f"- {n}\n" for n in ctx.notes))
    if args.json:
        args.json.write_text(json.dumps({"machine": machine_line(), "figures": [f.row() for f in ctx.figures],
                                         "notes": ctx.notes}, indent=1))


if __name__ == "__main__":
    sys.exit(main())
