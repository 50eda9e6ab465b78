"""Benchmark: what provenance and SBOM attestations cost a build. The same repository built
with the defaults (provenance mode=max and an SBOM) and with `buildConfig.attestations: false`,
alternating, each run on a new commit; for a trivial `FROM scratch` + `COPY` build and for a
realistic one (Debian, files written by a RUN step, a COPY of the source).

Figures: POST -> callback, and the job's own buildSeconds and pushSeconds (the SBOM scan runs
inside the build; the attestation manifests are pushed with the image).
"""

import statistics

from bench.common import Context, service_build
from bench.repos import TRIVIAL, BuildRepo

REALISTIC = (
    "FROM debian:bookworm-slim\n"
    "COPY stamp.txt /app/stamp.txt\n"
    "RUN mkdir -p /app/lib && for i in $(seq 1 200); do head -c 20000 /dev/urandom > /app/lib/f$i; done\n"
    "RUN cat /app/stamp.txt > /app/version\n"
)


def run(ctx: Context) -> None:
    if not ctx.base_images:
        ctx.note("attestations: no base images, so no SBOM scanner; only provenance is measured")
    series(ctx, "trivial (FROM scratch + COPY)", BuildRepo(ctx.git, "attest-trivial", {"Dockerfile": TRIVIAL}),
           ctx.n(1, 6))
    if ctx.base_images and not ctx.short:
        series(ctx, "realistic (debian, 4 MB of files)",
               BuildRepo(ctx.git, "attest-realistic", {"Dockerfile": REALISTIC}), 5)
    elif ctx.base_images:
        ctx.note("attestations: realistic build skipped in --short")


def series(ctx: Context, label: str, repo: BuildRepo, n: int) -> None:
    project = f"attest-{repo.repo.name}"
    figures = {side: {"e2e": [], "build": [], "push": []} for side in ("with", "without")}
    for side in ("with", "without"):  # warm-up: the cache ref, the base image, the scanner image
        service_build(ctx, repo.url, repo.new_commit(), project=project, build_config=_config(side))
    for i in range(n):
        for side in (("with", "without") if i % 2 == 0 else ("without", "with")):
            job = service_build(ctx, repo.url, repo.new_commit(), project=project, build_config=_config(side))
            payload = job["payload"]
            figures[side]["e2e"].append((job["t_callback"] - job["t_send"]) * 1000)
            figures[side]["build"].append((payload.get("buildSeconds") or 0) * 1000)
            figures[side]["push"].append((payload.get("pushSeconds") or 0) * 1000)
    b = "attestations"
    for side, words in (("with", "with attestations"), ("without", "without")):
        ctx.add(b, f"{label}: {words}, POST -> callback", "ms", figures[side]["e2e"])
        ctx.add(b, f"{label}:   {words}, buildSeconds", "ms", figures[side]["build"])
        ctx.add(b, f"{label}:   {words}, pushSeconds", "ms", figures[side]["push"])
    extra = statistics.median(figures["with"]["e2e"]) - statistics.median(figures["without"]["e2e"])
    ctx.add(b, f"{label}: cost of attestations (median difference)", "ms", extra)


def _config(side: str) -> dict:
    return {} if side == "with" else {"attestations": False}
