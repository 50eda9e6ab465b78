"""Benchmark: what provenance and SBOM attestations cost a build. The same repository built
with the instance's attestations and with `buildConfig.attestations: false`, alternating, each
run on a new commit; for a trivial `FROM scratch` + `COPY` build and for a realistic one (Debian,
files written by a RUN step, a COPY of the source).

Two instance settings, one after the other: provenance alone (`ATTEST_PROVENANCE=max`,
`ATTEST_SBOM=false`: what `scripts/run` and docker-compose.yml give by default) and provenance
with an SBOM (the settings' own defaults; needs the scanner image, pushed with the base images).

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
PROVENANCE = {"ATTEST_PROVENANCE": "max", "ATTEST_SBOM": "false"}
BOTH = {"ATTEST_PROVENANCE": "max", "ATTEST_SBOM": "true"}


def run(ctx: Context, restart) -> None:
    trivial = BuildRepo(ctx.git, "attest-trivial", {"Dockerfile": TRIVIAL})
    realistic = BuildRepo(ctx.git, "attest-realistic", {"Dockerfile": REALISTIC}) if ctx.base_images else None
    try:
        settings = [("provenance", PROVENANCE)]
        if ctx.base_images:
            settings.append(("provenance + SBOM", BOTH))
        else:
            ctx.note("attestations: no base images, so no SBOM scanner and no realistic build; provenance only")
        for words, env in settings:
            restart(env)
            series(ctx, f"trivial, {words}", trivial, ctx.n(1, 6))
            if realistic is not None and (env is BOTH or not ctx.short):  # --short: the SBOM scan of real files
                series(ctx, f"realistic, {words}", realistic, ctx.n(1, 5))
    finally:
        restart()  # the next benchmarks run on the instance's usual settings


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
