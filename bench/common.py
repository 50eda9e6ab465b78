"""A build through the service and the same build by hand, timed the same way.

Through the service: POST the job, wait for its callback; the job log's timestamped lines say
when each step began. By hand: the same git commands the worker runs, then the buildctl argv
that `builds.services.steps.buildkit.command` makes for the same request (same cache ref, pushed by
digest like the service's), on a fresh checkout. The difference is what the service adds.
"""

import shutil
import subprocess
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from bench.support import Api, Figure, Infra, Instance, Receiver, first_event, job_body, log_events


class BenchError(RuntimeError):
    pass


@dataclass
class Context:
    short: bool
    root: Path  # the benchmark's data directory
    infra: Infra
    receiver: Receiver
    git: object  # tests.support.gitserver.GitServer
    base_images: bool  # debian:bookworm-slim can be built on
    instance: Instance | None = None
    postgres: object = None  # the PostgreSQL server process of --scaleout (restarted by faults)
    figures: list[Figure] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    buildctl_seconds: list[float] = field(default_factory=list)
    _api: Api | None = None

    def n(self, short: int, full: int) -> int:
        return short if self.short else full

    @property
    def api(self) -> Api:
        if self._api is None or self._api.port != self.instance.port:
            self._api = self.instance.api()
        return self._api

    def add(self, bench: str, name: str, unit: str, values, target: str = "", note: str = "",
            percentiles: bool = False) -> Figure:
        values = [values] if isinstance(values, (int, float)) else list(values)
        figure = Figure(bench, name, unit, values, target, note, percentiles)
        self.figures.append(figure)
        return figure

    def note(self, text: str) -> None:
        print(f"  note: {text}", flush=True)
        self.notes.append(text)


def new_job_id(prefix: str = "b") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def submit(ctx: Context, repo_url: str, commit: str, *, project: str = "bench", build_config: dict | None = None,
           job_id: str | None = None, api: Api | None = None) -> dict:
    job_id = job_id or new_job_id()
    api = api or ctx.api
    t_send = time.time()
    status, payload = api.request("POST", "/api/v1/jobs", job_body(job_id, repo_url, project=project, commit=commit,
                                                                   build_config=build_config))
    t_accepted = time.time()
    if status != 201:
        raise BenchError(f"POST /api/v1/jobs: HTTP {status}: {payload[:300]!r}")
    return {"id": job_id, "t_send": t_send, "t_accepted": t_accepted}


def job_log(ctx: Context, job_id: str) -> str:
    status, payload = ctx.api.request("GET", f"/api/v1/jobs/{job_id}/logs")
    return payload.decode(errors="replace") if status == 200 else ""


def finish(ctx: Context, job: dict, timeout: float = 600, want: str = "success") -> dict:
    """Wait for the job's callback; adds t_callback, payload and the log's step times."""
    t_callback, payload = ctx.receiver.wait([job["id"]], timeout)[job["id"]]
    job.update(t_callback=t_callback, payload=payload)
    text = job_log(ctx, job["id"])
    if want and payload.get("status") != want:
        tail = "\n".join(text.splitlines()[-25:])
        raise BenchError(f"job {job['id']} ended {payload.get('status')} ({payload.get('errorCode')}: "
                         f"{payload.get('error')}); log tail:\n{tail}")
    events = log_events(text)
    if payload.get("retryCount"):
        first_error = next((t for _, t in events if t.startswith("error [")), "?")
        ctx.note(f"job {job['id']} was retried {payload['retryCount']} time(s) after: {first_error[:220]}")
    job["steps"] = {
        "accepted": first_event(events, "job accepted"),
        "attempt": first_event(events, "attempt "),
        "fetching": first_event(events, "fetching "),
        "checked_out": first_event(events, "checked out commit"),
        "building": first_event(events, "building "),
        "pushed": first_event(events, "pushed "),
        "succeeded": first_event(events, "build succeeded"),
    }
    return job


def service_build(ctx: Context, repo_url: str, commit: str, **kw) -> dict:
    timeout = kw.pop("timeout", 600)
    return finish(ctx, submit(ctx, repo_url, commit, **kw), timeout)


def ms(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else (b - a) * 1000


# --- by hand ---------------------------------------------------------------------------------

GIT_FLAGS = ["-c", "protocol.file.allow=never", "-c", "advice.detachedHead=false", "-c", "core.hooksPath=/dev/null"]


def _run(argv: list[str], env: dict | None = None) -> None:
    result = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
    if result.returncode != 0:
        raise BenchError(f"{argv[0]} {argv[1:4]} failed ({result.returncode}): {result.stdout[-1500:].decode(errors='replace')}")


def hand_fetch(url: str, commit: str, checkout: Path, home: Path) -> None:
    """What the worker's git step runs for a full commit SHA, in the same order."""
    import os

    checkout.mkdir(parents=True)
    home.mkdir(parents=True)
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home), "LANG": "C.UTF-8",
           "GIT_TERMINAL_PROMPT": "0", "GIT_CONFIG_NOSYSTEM": "1"}
    base = ["git", *GIT_FLAGS, "-C", str(checkout)]
    _run([*base, "init", "-q"], env)
    _run([*base, "fetch", "--depth=1", "--no-tags", "--", url, commit], env)
    _run([*base, "checkout", "-q", "--detach", "FETCH_HEAD"], env)
    _run(["git", "-C", str(checkout), "rev-parse", "HEAD"], env)


def buildctl_argv(context_dir: Path, *, project: str, tag: str, metadata: Path,
                  user: str = "bench") -> tuple[list[str], dict]:
    from builds.services.steps import buildkit, naming

    request = buildkit.BuildRequest(
        context_dir=context_dir, dockerfile_dir=context_dir, dockerfile_name="Dockerfile",
        repository=naming.image_repository(user, project), cache_ref=naming.cache_ref(user, project),
        metadata_file=metadata,
    )
    argv, secret_env = buildkit.command(request)
    return argv, buildkit.buildctl_env(secret_env)


def hand_build(ctx: Context, url: str, commit: str, *, project: str = "bench", dockerfile=None) -> dict:
    """Fetch + buildctl by hand. `dockerfile(checkout) -> text`, for apps without one, gives the
    Dockerfile the service would generate; it is written into the checkout."""
    work = ctx.root / "hand" / uuid.uuid4().hex[:12]
    try:
        t0 = time.time()
        hand_fetch(url, commit, work / "src", work / "home")
        if dockerfile is not None:
            (work / "src" / "Dockerfile").write_text(dockerfile(work / "src"))
        t1 = time.time()
        argv, env = buildctl_argv(work / "src", project=project, tag=new_job_id("hand"), metadata=work / "metadata.json")
        _run(argv, env)
        t2 = time.time()
        return {"fetch": t1 - t0, "build": t2 - t1, "total": t2 - t0}
    finally:
        shutil.rmtree(work, ignore_errors=True)
