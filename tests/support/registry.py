"""A small client for the registry HTTP API (distribution v2), plain HTTP, with the builder's
registry credentials (REGISTRY_USERNAME/REGISTRY_PASSWORD in the environment) unless told not to.

Reads what tests need to check a pushed image, and pushes images that tests/support/baseimages.py
packs itself: blob uploads and a manifest PUT.
"""

import base64
import contextlib
import hashlib
import json
import os
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
MANIFEST_TYPES = (OCI_INDEX, OCI_MANIFEST, DOCKER_LIST, DOCKER_MANIFEST)
INDEX_TYPES = (OCI_INDEX, DOCKER_LIST)

# The registries we talk to are on loopback: an HTTP proxy from the environment must not apply.
_direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class RegistryError(RuntimeError):
    pass


def auth_header() -> dict:
    username, password = os.environ.get("REGISTRY_USERNAME", ""), os.environ.get("REGISTRY_PASSWORD", "")
    if not username:
        return {}
    token = base64.b64encode(f"{username}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


@contextlib.contextmanager
def docker_config(registry_addr: str):
    """A DOCKER_CONFIG directory holding the credentials, for buildctl run by a test."""
    with tempfile.TemporaryDirectory(prefix="docker-config-") as tmp:
        auth = auth_header().get("Authorization", "").removeprefix("Basic ")
        config = {"auths": {registry_addr: {"auth": auth}}} if auth and registry_addr else {}
        with open(os.path.join(tmp, "config.json"), "w") as fh:
            json.dump(config, fh)
        yield tmp


def _request(method: str, url: str, *, data=None, headers: dict | None = None, timeout: float = 60,
             anonymous: bool = False):
    headers = {**({} if anonymous else auth_header()), **(headers or {})}
    request = urllib.request.Request(url, data=data, headers=headers, method=method)
    try:
        return _direct.open(request, timeout=timeout)
    except urllib.error.HTTPError as exc:
        body = exc.read(2000).decode(errors="replace")
        raise RegistryError(f"{method} {url}: HTTP {exc.code} {body}") from None


def _accept() -> dict:
    return {"Accept": ", ".join(MANIFEST_TYPES)}


def manifest_digest(registry_addr: str, repo: str, tag: str) -> str:
    url = f"http://{registry_addr}/v2/{repo}/manifests/{tag}"
    with _request("HEAD", url, headers=_accept()) as response:
        digest = response.headers.get("Docker-Content-Digest")
    if digest:
        return digest
    with _request("GET", url, headers=_accept()) as response:
        body = response.read()
        return response.headers.get("Docker-Content-Digest") or "sha256:" + hashlib.sha256(body).hexdigest()


def manifest_digest_or_none(registry_addr: str, repo: str, tag: str) -> str | None:
    try:
        return manifest_digest(registry_addr, repo, tag)
    except RegistryError as exc:
        if "HTTP 404" in str(exc):
            return None
        raise


def get_manifest(registry_addr: str, repo: str, reference: str) -> tuple[str, dict]:
    """Returns (media type, manifest) for a tag or digest."""
    url = f"http://{registry_addr}/v2/{repo}/manifests/{reference}"
    with _request("GET", url, headers=_accept()) as response:
        body = json.loads(response.read())
        media_type = body.get("mediaType") or response.headers.get("Content-Type", "").split(";")[0]
    return media_type, body


def get_blob(registry_addr: str, repo: str, digest: str) -> bytes:
    with _request("GET", f"http://{registry_addr}/v2/{repo}/blobs/{digest}") as response:
        return response.read()


def get_image_manifest(registry_addr: str, repo: str, tag: str, platform: str = "linux/amd64") -> dict:
    """The image manifest for one platform, following an index when the tag points to one."""
    media_type, manifest = get_manifest(registry_addr, repo, tag)
    if media_type in INDEX_TYPES:
        os_name, arch = platform.split("/", 1)
        for entry in manifest.get("manifests", []):
            entry_platform = entry.get("platform", {})
            if entry_platform.get("os") == os_name and entry_platform.get("architecture") == arch:
                return get_manifest(registry_addr, repo, entry["digest"])[1]
        raise RegistryError(f"{repo}:{tag} has no {platform} manifest")
    return manifest


def get_image_config(registry_addr: str, repo: str, tag: str) -> dict:
    manifest = get_image_manifest(registry_addr, repo, tag)
    return json.loads(get_blob(registry_addr, repo, manifest["config"]["digest"]))


def blob_exists(registry_addr: str, repo: str, digest: str) -> bool:
    try:
        with _request("HEAD", f"http://{registry_addr}/v2/{repo}/blobs/{digest}"):
            return True
    except RegistryError as exc:
        if "HTTP 404" in str(exc):
            return False
        raise


def push_blob(registry_addr: str, repo: str, digest: str, source: bytes | Path) -> None:
    """Monolithic upload (POST then PUT with the digest), skipped when the blob is already there."""
    if blob_exists(registry_addr, repo, digest):
        return
    base = f"http://{registry_addr}"
    with _request("POST", f"{base}/v2/{repo}/blobs/uploads/", data=b"") as response:
        location = response.headers["Location"]
    if location.startswith("/"):
        location = base + location
    location += ("&" if "?" in location else "?") + f"digest={digest}"
    headers = {"Content-Type": "application/octet-stream"}
    if isinstance(source, bytes):
        with _request("PUT", location, data=source, headers=headers):
            return
    headers["Content-Length"] = str(Path(source).stat().st_size)
    with open(source, "rb") as body, _request("PUT", location, data=body, headers=headers, timeout=600):
        return


def push_manifest(registry_addr: str, repo: str, tag: str, manifest: bytes, media_type: str) -> str:
    url = f"http://{registry_addr}/v2/{repo}/manifests/{tag}"
    with _request("PUT", url, data=manifest, headers={"Content-Type": media_type}) as response:
        return response.headers.get("Docker-Content-Digest", "")


def push_manifest_and_blobs(
    registry_addr: str,
    repo: str,
    tags: tuple[str, ...],
    manifest: bytes,
    media_type: str,
    blobs: dict[str, bytes | Path],
) -> str:
    """Pushes a manifest under every tag, uploading its blobs first; a tag already at the same
    digest is left alone, so pushing an unchanged image again costs one HEAD per tag."""
    digest = "sha256:" + hashlib.sha256(manifest).hexdigest()
    stale = [tag for tag in tags if manifest_digest_or_none(registry_addr, repo, tag) != digest]
    if not stale:
        return digest
    for blob_digest, source in blobs.items():
        push_blob(registry_addr, repo, blob_digest, source)
    for tag in stale:
        push_manifest(registry_addr, repo, tag, manifest, media_type)
    return digest


def push_image(
    registry_addr: str, repo: str, tags: tuple[str, ...], config: dict, layers: list[dict]
) -> str:
    """Pushes a single-platform OCI image. Each layer is a dict with the gzip blob's `path`,
    `digest` and `size`; the config's rootfs.diff_ids must already name them."""
    config_bytes = json.dumps(config, sort_keys=True, separators=(",", ":")).encode()
    config_digest = "sha256:" + hashlib.sha256(config_bytes).hexdigest()
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": config_digest, "size": len(config_bytes)},
        "layers": [
            {"mediaType": OCI_LAYER_GZIP, "digest": layer["digest"], "size": layer["size"]} for layer in layers
        ],
    }
    manifest_bytes = json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode()
    blobs: dict[str, bytes | Path] = {layer["digest"]: Path(layer["path"]) for layer in layers}
    blobs[config_digest] = config_bytes
    return push_manifest_and_blobs(registry_addr, repo, tags, manifest_bytes, OCI_MANIFEST, blobs)


def push_oci_layout(registry_addr: str, repo: str, tags: tuple[str, ...], layout_dir: Path) -> str:
    """Pushes the image an OCI layout directory (as `buildctl --output type=oci,tar=false`
    writes it) holds: the single manifest its index.json names, with that manifest's blobs."""
    layout_dir = Path(layout_dir)

    def blob_path(digest: str) -> Path:
        algorithm, hex_digest = digest.split(":", 1)
        return layout_dir / "blobs" / algorithm / hex_digest

    index = json.loads((layout_dir / "index.json").read_text())
    entry = index["manifests"][0]
    manifest_bytes = blob_path(entry["digest"]).read_bytes()
    manifest = json.loads(manifest_bytes)
    if entry["mediaType"] in INDEX_TYPES:
        raise RegistryError(f"{layout_dir} holds an index; only single-platform images are supported")
    blobs: dict[str, bytes | Path] = {manifest["config"]["digest"]: blob_path(manifest["config"]["digest"])}
    for layer in manifest["layers"]:
        blobs[layer["digest"]] = blob_path(layer["digest"])
    return push_manifest_and_blobs(registry_addr, repo, tags, manifest_bytes, entry["mediaType"], blobs)
