"""Benchmark 2: what the service adds to a build. End to end (POST sent -> callback received)
minus fetch + buildctl run by hand on the same kind of tree, for a trivial `FROM scratch` +
`COPY` build and for a Debian build with a 2-second RUN.

Runs alternate (service, hand, hand, service, ...) and every run builds a new commit, so both
sides copy new content and export the registry cache of the same project.
"""

import statistics

from bench.common import Context, hand_build, ms, service_build
from bench.repos import TRIVIAL, BuildRepo, sleeping


def run(ctx: Context) -> None:
    series(ctx, "trivial (FROM scratch + COPY)", BuildRepo(ctx.git, "overhead-trivial", {"Dockerfile": TRIVIAL}),
           ctx.n(2, 12), "<= 60 ms more (Go: +60, e2e 376)", relative=False)
    if ctx.base_images:
        series(ctx, "2 s RUN (debian:bookworm-slim)", BuildRepo(ctx.git, "overhead-sleep", {"Dockerfile": sleeping(2)}),
               ctx.n(1, 6), "<= 5% more", relative=True)
    else:
        ctx.note("2 s RUN build skipped: no Debian base image (see --base-images)")


def series(ctx: Context, label: str, repo: BuildRepo, n: int, target: str, relative: bool) -> None:
    project = f"overhead-{repo.repo.name}"
    service_build(ctx, repo.url, repo.new_commit(), project=project)  # warm-up: cache ref, base image
    hand_build(ctx, repo.url, repo.new_commit(), project=project)
    e2e, hand, hand_fetch, hand_buildctl, svc_fetch, svc_buildctl, after_build = [], [], [], [], [], [], []
    for i in range(n):
        order = ("service", "hand") if i % 2 == 0 else ("hand", "service")
        for side in order:
            commit = repo.new_commit()
            if side == "service":
                job = service_build(ctx, repo.url, commit, project=project)
                s = job["steps"]
                e2e.append((job["t_callback"] - job["t_send"]) * 1000)
                svc_fetch.append(ms(s["fetching"], s["checked_out"]))
                svc_buildctl.append(ms(s["building"], s["pushed"]))
                after_build.append(ms(s["pushed"], job["t_callback"]))
            else:
                h = hand_build(ctx, repo.url, commit, project=project)
                hand.append(h["total"] * 1000)
                hand_fetch.append(h["fetch"] * 1000)
                hand_buildctl.append(h["build"] * 1000)
    b = "2 overhead"
    ctx.add(b, f"{label}: service, POST -> callback", "ms", e2e)
    ctx.add(b, f"{label}: by hand, fetch + buildctl", "ms", hand)
    ctx.add(b, f"{label}:   by hand git steps", "ms", hand_fetch)
    ctx.add(b, f"{label}:   by hand buildctl", "ms", hand_buildctl)
    ctx.add(b, f"{label}:   service git steps (log)", "ms", svc_fetch)
    ctx.add(b, f"{label}:   service buildctl (log: building -> pushed)", "ms", svc_buildctl)
    ctx.add(b, f"{label}:   service pushed -> callback received", "ms", after_build)
    extra = statistics.median(e2e) - statistics.median(hand)
    if relative:
        ctx.add(b, f"{label}: service overhead (median difference)", "%", extra / statistics.median(hand) * 100, target)
    else:
        ctx.add(b, f"{label}: service overhead (median difference)", "ms", extra, target)
