"""Writing a job's tag in the registry: the manifest buildctl pushed by digest, PUT under the tag.

buildctl pushes images by digest only, so a build that is still running when its job was taken
away can never move a tag. The tag is written here, by the attempt that holds the lease (the
pipeline proves that with a conditional update just before `TagWriter.put`).

Credentials are the builder's own (REGISTRY_USERNAME/REGISTRY_PASSWORD) or, without them, the
`auths` entry of the operator's docker config (DOCKER_CONFIG, else ~/.docker); credential
helpers are not read. A registry may take them as basic auth or through a bearer-token
challenge. The registry is plain HTTP when REGISTRY_INSECURE.
"""

import base64
import hashlib
import http.client
import json
import re
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from django.conf import settings

from builds import errors
from builds.errors import TransientError

MANIFEST_TYPES = (
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.docker.distribution.manifest.v2+json",
)
_MAX_MANIFEST = 4 * 1024 * 1024  # the limit distribution puts on a manifest


def _unavailable(message: str) -> TransientError:
    return TransientError(f"the registry is not reachable: {message}", code=errors.REGISTRY_UNAVAILABLE)


def basic_credentials(host: str) -> str | None:
    """`user:password` for the registry host, base64-encoded, or None."""
    if settings.REGISTRY_USERNAME:
        return base64.b64encode(f"{settings.REGISTRY_USERNAME}:{settings.REGISTRY_PASSWORD}".encode()).decode()
    try:
        auths = json.loads((Path(settings.DOCKER_CONFIG) / "config.json").read_text()).get("auths") or {}
    except (OSError, ValueError):
        return None
    for key in (host, f"https://{host}", f"http://{host}", f"https://{host}/v1/", f"https://{host}/v2/"):
        entry = auths.get(key) or {}
        if entry.get("auth"):
            return entry["auth"]
        if entry.get("username"):
            return base64.b64encode(f"{entry['username']}:{entry.get('password', '')}".encode()).decode()
    return None


def _platform(spec: dict) -> str | None:
    if not spec.get("os"):
        return None
    return "/".join(p for p in (spec.get("os"), spec.get("architecture"), spec.get("variant")) if p)


def _challenge(header: str) -> dict[str, str] | None:
    """The parameters of a `WWW-Authenticate: Bearer realm=...,service=...,scope=...` header."""
    if not header.lower().startswith("bearer "):
        return None
    return dict(re.findall(r'(\w+)="([^"]*)"', header[len("bearer "):]))


class TagWriter:
    """One registry repository, with the authorization its first answer asked for."""

    def __init__(self, repository: str, *, timeout_seconds: float):
        host, _, self.path = repository.partition("/")
        self.base = f"{'http' if settings.REGISTRY_INSECURE else 'https'}://{host}/v2/{self.path}"
        self.timeout = timeout_seconds
        self.basic = basic_credentials(host)
        self.authorization = f"Basic {self.basic}" if self.basic else None

    def read_manifest(self, digest: str) -> tuple[bytes, str]:
        """The manifest (exact bytes) and its media type. Call before the fence: it also settles
        authorization, so the fenced PUT is one request."""
        with self._send("GET", f"{self.base}/manifests/{digest}", headers={"Accept": ", ".join(MANIFEST_TYPES)}) as answer:
            body = answer.read(_MAX_MANIFEST + 1)
            media_type = answer.headers.get("Content-Type", "").split(";")[0].strip()
        if len(body) > _MAX_MANIFEST or "sha256:" + hashlib.sha256(body).hexdigest() != digest:
            raise _unavailable(f"the manifest read back for {digest} does not match its digest")
        if media_type not in MANIFEST_TYPES:
            try:
                media_type = json.loads(body).get("mediaType") or ""
            except ValueError:
                media_type = ""
        if media_type not in MANIFEST_TYPES:
            raise _unavailable(f"the manifest {digest} has no known media type")
        return body, media_type

    def image_summary(self, manifest: bytes) -> dict:
        """{sizeBytes, layers, platform} of the image a pushed manifest (or index) names. The size
        is the layers' compressed bytes, as the registry stores them. An index's attestation
        manifests (BuildKit marks them `vnd.docker.reference.type`) are not the image."""
        document = json.loads(manifest)
        platform = None
        if "manifests" in document:
            images = [m for m in document["manifests"]
                      if "vnd.docker.reference.type" not in (m.get("annotations") or {})]
            if not images:
                return {"sizeBytes": None, "layers": None, "platform": None}
            described = images[0]
            platform = _platform(described.get("platform") or {})
            document = json.loads(self.read_manifest(described["digest"])[0])
        layers = document.get("layers") or []
        if platform is None:
            with self._send("GET", f"{self.base}/blobs/{document['config']['digest']}", headers={}) as answer:
                platform = _platform(json.loads(answer.read(_MAX_MANIFEST)))
        return {"sizeBytes": sum(layer.get("size", 0) for layer in layers), "layers": len(layers), "platform": platform}

    def put(self, tag: str, manifest: bytes, media_type: str) -> None:
        with self._send("PUT", f"{self.base}/manifests/{tag}", data=manifest,
                        headers={"Content-Type": media_type}) as answer:
            written = answer.headers.get("Docker-Content-Digest")
        expected = "sha256:" + hashlib.sha256(manifest).hexdigest()
        if written and written != expected:
            raise _unavailable(f"the registry stored {written} under {tag}, not {expected}")

    def _send(self, method: str, url: str, *, data: bytes | None = None, headers: dict[str, str]):
        for attempt in range(2):
            request = urllib.request.Request(url, data=data, method=method, headers=dict(headers))
            if self.authorization:
                request.add_header("Authorization", self.authorization)
            try:
                return urllib.request.urlopen(request, timeout=self.timeout)
            except urllib.error.HTTPError as exc:
                detail = exc.read(500).decode(errors="replace").strip()
                challenge = _challenge(exc.headers.get("WWW-Authenticate", ""))
                if exc.code == 401 and attempt == 0 and challenge and challenge.get("realm"):
                    self.authorization = f"Bearer {self._token(challenge)}"
                    continue
                raise _unavailable(f"{method} {url}: HTTP {exc.code} {detail[:200]}") from None
            except (OSError, http.client.HTTPException) as exc:
                raise _unavailable(f"{method} {url}: {exc}") from None
        raise AssertionError("unreachable: the second attempt returns or raises")

    def _token(self, challenge: dict[str, str]) -> str:
        # Ask for push as well as pull: the PUT after the fence must not need another round trip.
        query = {"scope": f"repository:{self.path}:pull,push"}
        if challenge.get("service"):
            query["service"] = challenge["service"]
        request = urllib.request.Request(f"{challenge['realm']}?{urllib.parse.urlencode(query)}")
        if self.basic:
            request.add_header("Authorization", f"Basic {self.basic}")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as answer:
                body = json.loads(answer.read(1024 * 1024))
        except urllib.error.HTTPError as exc:
            raise _unavailable(f"the token service answered HTTP {exc.code}") from None
        except (OSError, http.client.HTTPException, ValueError) as exc:
            raise _unavailable(f"the token service failed: {exc}") from None
        token = body.get("token") or body.get("access_token")
        if not token:
            raise _unavailable("the token service answered without a token")
        return token
