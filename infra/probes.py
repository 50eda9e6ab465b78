"""Is the registry up, is buildkitd up: one probe of each, for the launcher that waits for them
(infra/localservices.py) and for the service's readiness checks
(builds/services/operations/health.py). Standard library only, so the launcher runs it before
(and without) Django."""

import json
import subprocess
import urllib.error
import urllib.request

# A registry on this host must not be reached through an HTTP proxy taken from the environment.
_direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class ProbeFailed(Exception):
    """A probe's failure: `reason` is short and names no host, user or path; `detail` is for a log."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(reason)
        self.reason, self.detail = reason, detail or reason


def registry(base_url: str, *, timeout: float, direct: bool = False) -> str:
    """What the registry's API root (`GET <base_url>/v2/`) answers: "ok" (401 is a registry that
    wants credentials: it is up too), else "HTTP <status>". Nothing answering raises OSError
    (urllib's URLError is one). `direct` goes around the environment's HTTP proxy."""
    try:
        with (_direct.open if direct else urllib.request.urlopen)(f"{base_url}/v2/", timeout=timeout):
            return "ok"
    except urllib.error.HTTPError as exc:
        return "ok" if exc.code == 401 else f"HTTP {exc.code}"


def buildkit_workers(buildctl: str, addr: str, *, timeout: float) -> list[dict]:
    """buildkitd's workers, from one `buildctl debug workers`. ProbeFailed when buildctl cannot
    reach buildkitd; subprocess.TimeoutExpired when it does not answer within `timeout`."""
    result = subprocess.run(
        [buildctl, "--addr", addr, "debug", "workers", "--format", "{{json .}}"],
        stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout,
    )
    if result.returncode != 0:
        detail = (result.stderr.strip().splitlines() or ["no output"])[-1][:500]
        raise ProbeFailed("buildctl could not reach buildkitd", f"buildctl exited with {result.returncode}: {detail}")
    return json.loads(result.stdout or "[]")
