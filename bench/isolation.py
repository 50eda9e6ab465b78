"""What the build network costs: the same trivial builds (one RUN step, no cache) on the
benchmark's buildkitd, whose RUN steps get a network namespace of their own on the CNI bridge
with the egress policy, and on a second buildkitd that runs them on the host's network, taking
turns, in one run. Both build through buildctl by hand, so nothing else differs."""

import statistics
import subprocess
import time
import uuid

from bench.common import Context
from infra import localservices
from tests.support import registry


def build_seconds(addr: str, context, registry_addr: str) -> float:
    (context / "Dockerfile").write_text(f"FROM debian:bookworm-slim\nRUN echo {uuid.uuid4().hex} > /nonce\n")
    argv = ["buildctl", "--addr", addr, "build", "--progress", "plain", "--frontend", "dockerfile.v0",
            "--local", f"context={context}", "--local", f"dockerfile={context}"]
    with registry.docker_config(registry_addr) as config_dir:
        t = time.perf_counter()
        subprocess.run(argv, check=True, capture_output=True, env={"PATH": "/usr/local/bin:/usr/bin:/bin",
                                                                      "DOCKER_CONFIG": config_dir})
        return time.perf_counter() - t


def run(ctx: Context) -> None:
    if not ctx.base_images:
        ctx.note("isolation skipped: no Debian base image (see --base-images)")
        return
    root = ctx.root / "run" / "isolation"
    host_addr = f"unix://{root}/buildkitd.sock"
    host_bk = localservices.start_buildkitd(root, host_addr, ctx.infra.registry_addr, root / "buildkitd.log",
                                            network=False)
    try:
        context = root / "context"
        context.mkdir(parents=True, exist_ok=True)
        bridged, host = [], []
        for _ in range(2):  # warm both: base image pulled, CNI pool filled
            build_seconds(ctx.infra.buildkit_addr, context, ctx.infra.registry_addr)
            build_seconds(host_addr, context, ctx.infra.registry_addr)
        for i in range(ctx.n(3, 15)):
            pair = [(bridged, ctx.infra.buildkit_addr), (host, host_addr)]
            for values, addr in (pair if i % 2 == 0 else pair[::-1]):
                values.append(build_seconds(addr, context, ctx.infra.registry_addr) * 1000)
    finally:
        localservices.stop(host_bk)
    b = "isolation"
    ctx.add(b, "trivial RUN build, own network namespace + egress policy", "ms", bridged)
    ctx.add(b, "trivial RUN build, host network (no isolation)", "ms", host)
    ctx.add(b, "cost of isolation (median difference)", "ms", statistics.median(bridged) - statistics.median(host))
    ctx.add(b, "ratio bridged / host (medians)", "x", statistics.median(bridged) / statistics.median(host))
