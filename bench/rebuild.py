"""Benchmark 3: a realistic app, cold build versus rebuild after a one-line source change, and
the service's overhead on it (cold and warm) against the same build by hand.

Cold means buildkitd's local cache emptied (`buildctl prune --all`) and a project whose registry
cache does not exist yet. The rebuild is measured twice: with buildkitd's local cache (the
usual case on one builder) and with the local cache emptied, so only the registry cache
(`--import-cache`) can help, as on a builder that never built the project.

The app is a Node.js server with an npm dependency layer (`--app node`): zero-config
(`isAutoBuild`, no Dockerfile) when the service has a Dockerfile generator, else with its own
Dockerfile. `--app simulated` uses a Debian image whose "dependency install" is a 2 s RUN
writing 300 files (1 s and 60 files with --short); it needs no network and is what `--short` uses.
"""

import statistics
import uuid

from bench.common import BenchError, Context, hand_build, service_build
from bench.repos import BuildRepo, node_app_files, server_js, simulated_app_files


def zero_config_available() -> bool:
    try:
        from builds.dockerfile import plan_build  # noqa: F401
    except ImportError:
        return False
    return True


def generated_dockerfile(checkout) -> str:
    from builds.dockerfile import plan_build

    return plan_build(checkout, {"isAutoBuild": True}, repo_root=checkout).dockerfile


def run(ctx: Context, app: str) -> None:
    if not ctx.base_images:
        ctx.note("rebuild skipped: no base images (see --base-images)")
        return
    if app == "auto":
        app = "simulated" if ctx.short else "node"
    zero_config = app == "node" and zero_config_available()
    if app == "node":
        _ensure_node_image(ctx)
        files = node_app_files(ctx.root / "cache", zero_config)
        source, change = "server.js", lambda i: server_js(f"hello {i}")
    else:
        files = simulated_app_files(*ctx.n((1, 60), (2, 300)))
        source, change = "server.txt", lambda i: f"hello {i}\n"
    label = f"{app} app" + (" (zero-config)" if zero_config else " (own Dockerfile)")
    ctx.note(f"rebuild uses the {label}")
    build_config = {"isAutoBuild": True} if zero_config else None
    repo = BuildRepo(ctx.git, f"app-{app}", files)
    dockerfile = generated_dockerfile if zero_config else None
    edits = iter(range(1, 10_000))

    def one_line_change() -> str:
        return repo.change(source, change(next(edits)))

    cold, warm, registry_only, hand_cold, hand_warm = [], [], [], [], []
    ctx.buildctl_seconds = []
    for _ in range(ctx.n(1, 3)):
        project = f"app-{uuid.uuid4().hex[:8]}"
        ctx.infra.prune_build_cache()
        cold.append(_e2e(ctx, repo, one_line_change(), project, build_config))
        warm.append(_e2e(ctx, repo, one_line_change(), project, build_config))
        ctx.infra.prune_build_cache()
        registry_only.append(_e2e(ctx, repo, one_line_change(), project, build_config))
        if ctx.short:  # the by-hand path is exercised by the overhead benchmark already
            continue
        hand_project = f"hand-{uuid.uuid4().hex[:8]}"
        ctx.infra.prune_build_cache()
        hand_cold.append(hand_build(ctx, repo.url, one_line_change(), project=hand_project, dockerfile=dockerfile)["total"])
        hand_warm.append(hand_build(ctx, repo.url, one_line_change(), project=hand_project, dockerfile=dockerfile)["total"])
    b = "3 rebuild"
    ctx.add(b, f"{label}: cold build, POST -> callback", "s", cold)
    ctx.add(b, f"{label}: rebuild after one-line change (local + registry cache)", "s", warm)
    ctx.add(b, f"{label}: rebuild, registry cache only (local cache emptied)", "s", registry_only)
    ctx.add(b, f"{label}: buildctl inside the service, cold / warm / registry-only runs", "s", ctx.buildctl_seconds)
    ctx.add(b, "rebuild / cold (local + registry cache)", "%", [w / c * 100 for w, c in zip(warm, cold)], "<= 30%")
    ctx.add(b, "rebuild / cold (registry cache only)", "%", [r / c * 100 for r, c in zip(registry_only, cold)], "<= 30%")
    if hand_cold:
        ctx.add(b, f"{label}: by hand cold, fetch + buildctl", "s", hand_cold)
        ctx.add(b, f"{label}: by hand after one-line change", "s", hand_warm)
        ctx.add(b, "service overhead, cold (median difference)", "%",
                (statistics.median(cold) / statistics.median(hand_cold) - 1) * 100)
        ctx.add(b, "service overhead, warm (median difference)", "%",
                (statistics.median(warm) / statistics.median(hand_warm) - 1) * 100)


def _e2e(ctx: Context, repo: BuildRepo, commit: str, project: str, build_config: dict | None) -> float:
    job = service_build(ctx, repo.url, commit, project=project, build_config=build_config, timeout=900)
    steps = job["steps"]
    if steps["building"] and steps["pushed"]:
        ctx.buildctl_seconds.append(steps["pushed"] - steps["building"])
    return job["t_callback"] - job["t_send"]


def _ensure_node_image(ctx: Context) -> None:
    from tests.support.baseimages import default_cache_dir, ensure_base_images

    try:
        ensure_base_images(ctx.infra.registry_addr, default_cache_dir(), ctx.infra.buildkit_addr, images=("node",))
    except Exception as exc:
        raise BenchError(f"cannot provide the node base image: {exc}") from exc
