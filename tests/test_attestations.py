"""What a pushed image carries and what the job tells about its build (issue 15, items 1-3):
provenance and SBOM attestations, OCI annotations and labels, and the job's image, steps, cache
and phase times. Everything is read back from the real registry by digest, with the builder's
credentials (the test registry refuses anonymous reads).

The test environment turns attestations off (tests/testenv.py: they would cost every other
test's build a push of more manifests), so this module's builds run on a worker of its own with
provenance on. The SBOM test is marked `downloads`: its scanner is the one
tests/support/baseimages.py makes (syft from the Go module proxy behind
configs/sbom-scanner/scan.sh, minutes to compile on a cold cache), pushed where BuildKit looks for
its default scanner, so only the session of the downloading tests pays for it.
"""

import contextlib
import json
import secrets
import urllib.parse

import pytest
from django.test import override_settings

from builds import errors
from builds.services.steps import buildkit
from tests.conftest import CACHE_DIR, REGISTRY_ADDR, Worker
from tests.support import registry
from tests.support.baseimages import ensure_base_images
from tests.support.jobs import log_text, new_id, submit, wait_final

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("live_db")]

REPO = "tester/demo-project"
BASE = "FROM debian:bookworm-slim\n"
JOB_ID_KEY = "dev.hubfly.builder.job-id"
PROVENANCE = "https://slsa.dev/provenance/v1"
SPDX = "https://spdx.dev/Document"


@contextlib.contextmanager
def replacing(worker: Worker, name: str, **env: str):
    """Another build worker in place of `worker` (it would take the jobs too), started again after."""
    worker.stop()
    other = Worker(name, concurrency=2, extra_env=env)
    try:
        yield other
    finally:
        other.stop()
        worker.start()


@pytest.fixture(scope="module")
def attesting_worker(worker):
    """A worker with provenance as in production (mode=max); no SBOM, which needs the scanner."""
    with replacing(worker, "attest", ATTEST_PROVENANCE="max", ATTEST_SBOM="false") as w:
        yield w


@pytest.fixture
def sbom_worker(attesting_worker, infra):
    """A worker with the production defaults, provenance and SBOM, and the scanner image in place."""
    ensure_base_images(infra["registry"], CACHE_DIR, infra["buildkit"], images=("debian", "sbom-scanner"))
    with replacing(attesting_worker, "attest-sbom", ATTEST_PROVENANCE="max", ATTEST_SBOM="true") as w:
        yield w


def with_credentials(url: str, user: str, password: str) -> str:
    parts = urllib.parse.urlsplit(url)
    return urllib.parse.urlunsplit((parts.scheme, f"{user}:{password}@{parts.netloc}", parts.path, "", ""))


def attestations(digest: str) -> dict[str, dict]:
    """predicate type -> predicate, of the attestation manifests the image's index holds."""
    media_type, index = registry.get_manifest(REGISTRY_ADDR, REPO, digest)
    if media_type not in registry.INDEX_TYPES:
        return {}
    found = {}
    for entry in index["manifests"]:
        if (entry.get("annotations") or {}).get("vnd.docker.reference.type") != "attestation-manifest":
            continue
        _, manifest = registry.get_manifest(REGISTRY_ADDR, REPO, entry["digest"])
        for layer in manifest["layers"]:
            statement = json.loads(registry.get_blob(REGISTRY_ADDR, REPO, layer["digest"]))
            found[statement["predicateType"]] = statement["predicate"]
    return found


def everything_pushed(digest: str) -> str:
    """The index, manifests, configs and attestation blobs of the image, as one text."""
    texts = []
    media_type, top = registry.get_manifest(REGISTRY_ADDR, REPO, digest)
    manifests = [top]
    if media_type in registry.INDEX_TYPES:
        manifests += [registry.get_manifest(REGISTRY_ADDR, REPO, e["digest"])[1] for e in top["manifests"]]
    for manifest in manifests:
        texts.append(json.dumps(manifest))
        if "config" in manifest:
            texts.append(registry.get_blob(REGISTRY_ADDR, REPO, manifest["config"]["digest"]).decode(errors="replace"))
        for layer in manifest.get("layers", []):
            if "in-toto" in layer["mediaType"]:
                texts.append(registry.get_blob(REGISTRY_ADDR, REPO, layer["digest"]).decode(errors="replace"))
    return "\n".join(texts)


def build_with_credentials(api, git_server, name: str, dockerfile: str):
    """A built job whose repository URL carried a user and password: (repo, job, commit, password)."""
    repo = git_server.repo(new_id(name))
    sha = repo.commit({"Dockerfile": dockerfile})
    password = secrets.token_hex(12)
    job_id = submit(api, with_credentials(repo.url, "deploy", password))
    job = wait_final(job_id, timeout=240)
    assert job.status == "success", (job.error_code, job.error, log_text(api, job_id))
    return repo, job, sha, password


def test_provenance_names_the_commit_repository_and_materials_without_credentials(api, attesting_worker, git_server):
    repo, job, sha, password = build_with_credentials(api, git_server, "attest", BASE + "RUN echo attested > /a.txt\n")

    found = attestations(job.image_digest)
    assert set(found) == {PROVENANCE}, found.keys()
    provenance = found[PROVENANCE]
    vcs = provenance["runDetails"]["metadata"]["buildkit_metadata"]["vcs"]
    assert vcs == {"source": repo.url, "revision": sha}
    materials = provenance["buildDefinition"]["resolvedDependencies"]
    assert any(m["uri"].startswith("pkg:docker/debian@bookworm-slim") for m in materials), materials
    assert all(m["digest"].get("sha256") for m in materials)
    # mode=max: the build's steps are in it.
    assert "echo attested > /a.txt" in json.dumps(provenance["buildDefinition"]["internalParameters"]["buildConfig"])

    pushed = everything_pushed(job.image_digest)
    assert password not in pushed and "deploy:" not in pushed


@pytest.mark.downloads
@pytest.mark.timeout(1800)  # the scanner's syft compiles from source on a cold cache
def test_sbom_lists_the_image_packages_beside_the_provenance(api, sbom_worker, git_server):
    repo, job, sha, password = build_with_credentials(api, git_server, "sbom", BASE + "RUN echo scanned > /s.txt\n")

    found = attestations(job.image_digest)
    assert set(found) == {PROVENANCE, SPDX}, found.keys()
    assert found[PROVENANCE]["runDetails"]["metadata"]["buildkit_metadata"]["vcs"] == {"source": repo.url,
                                                                                       "revision": sha}
    sbom = found[SPDX]
    assert sbom["spdxVersion"].startswith("SPDX-") and any(p["name"] == "ca-certificates" for p in sbom["packages"])
    pushed = everything_pushed(job.image_digest)
    assert password not in pushed and "deploy:" not in pushed


def test_annotations_and_labels_name_source_revision_project_and_job(api, attesting_worker, git_server):
    repo, job, sha, password = build_with_credentials(api, git_server, "annotated",
                                                      BASE + "RUN echo labelled > /l.txt\n")
    job_id = job.id

    expected = {
        "org.opencontainers.image.source": repo.url,
        "org.opencontainers.image.revision": sha,
        "org.opencontainers.image.title": "demo-project",
        JOB_ID_KEY: job_id,
    }
    _, index = registry.get_manifest(REGISTRY_ADDR, REPO, job.image_digest)
    manifest = registry.get_image_manifest(REGISTRY_ADDR, REPO, job.image_digest)
    labels = registry.get_image_config(REGISTRY_ADDR, REPO, job.image_digest)["config"]["Labels"]
    for where in (index["annotations"], manifest["annotations"], labels):
        assert {k: where.get(k) for k in expected} == expected
        assert where["org.opencontainers.image.created"].endswith("Z")
    assert password not in everything_pushed(job.image_digest)


def test_a_job_may_push_without_attestations(api, attesting_worker, git_server):
    repo = git_server.repo(new_id("plain"))
    repo.commit({"Dockerfile": BASE + "RUN echo plain > /p.txt\n"})
    job_id = submit(api, repo.url, attestations=False)
    job = wait_final(job_id, timeout=240)
    assert job.status == "success", (job.error_code, job.error, log_text(api, job_id))
    media_type, manifest = registry.get_manifest(REGISTRY_ADDR, REPO, job.image_digest)
    assert media_type not in registry.INDEX_TYPES and attestations(job.image_digest) == {}
    # The annotations and labels are there all the same.
    assert manifest["annotations"][JOB_ID_KEY] == job_id
    assert registry.get_image_config(REGISTRY_ADDR, REPO, job.image_digest)["config"]["Labels"][JOB_ID_KEY] == job_id


def test_a_scanner_that_cannot_be_pulled_fails_the_build_as_ours_and_opting_out_still_builds(
        api, attesting_worker, git_server):
    repo = git_server.repo(new_id("noscanner"))
    repo.commit({"Dockerfile": "FROM scratch\nCOPY Dockerfile /Dockerfile\n"})
    with replacing(attesting_worker, "no-scanner", ATTEST_PROVENANCE="max", ATTEST_SBOM="true",
                   SBOM_SCANNER_IMAGE="hubfly-test/no-such-scanner:1", MAX_RETRIES="0"):
        failed_id = submit(api, repo.url)
        failed = wait_final(failed_id, timeout=240)
        plain_id = submit(api, repo.url, attestations=False)
        plain = wait_final(plain_id, timeout=240)
    assert (failed.status, failed.error_code) == ("failed", errors.SBOM_SCANNER_UNAVAILABLE), log_text(api, failed_id)
    assert "docker.io/hubfly-test/no-such-scanner:1" in failed.error and "ATTEST_SBOM=false" in failed.error
    assert api.get(f"/api/v1/jobs/{failed_id}").json()["failure"] == {"type": "infrastructure", "step": None,
                                                                      "retryable": True}
    assert plain.status == "success", (plain.error_code, plain.error, log_text(api, plain_id))


@pytest.mark.parametrize("value", ["false", 0, None, "no"])
def test_attestations_must_be_a_boolean(api, value):
    data = {"id": new_id(), "projectId": "p", "userId": "u", "sourceInfo": {"gitRepository": "https://example.com/r.git"},
            "buildConfig": {"attestations": value}}
    response = api.post("/api/v1/jobs", data, format="json")
    assert response.status_code == 400, response.content
    assert "attestations" in response.json()["fields"]["buildConfig"]


def test_a_rebuild_reports_its_cached_steps_and_the_image_as_pushed(api, attesting_worker, git_server, receiver):
    repo = git_server.repo(new_id("steps"))
    marker = secrets.token_hex(8)
    # each RUN sleeps: buildctl prints durations to a tenth of a second, and an echo alone is "DONE 0.0s"
    repo.commit({"Dockerfile": BASE + f"RUN sleep 0.3 && echo {marker} > /one.txt\nRUN sleep 0.3 && echo two > /two.txt\n"})
    first_id = submit(api, repo.url)
    first = wait_final(first_id, timeout=240)
    assert first.status == "success", (first.error_code, first.error, log_text(api, first_id))
    second_id = submit(api, repo.url)
    second = wait_final(second_id, timeout=240)
    assert second.status == "success", (second.error_code, second.error, log_text(api, second_id))

    before, after = api.get(f"/api/v1/jobs/{first_id}").json(), api.get(f"/api/v1/jobs/{second_id}").json()
    assert [s["name"].split("] ", 1)[1] for s in after["steps"]] == [
        "FROM docker.io/library/debian:bookworm-slim" + after["steps"][0]["name"].split("bookworm-slim", 1)[1],
        f"RUN sleep 0.3 && echo {marker} > /one.txt", "RUN sleep 0.3 && echo two > /two.txt",
    ]
    assert [s["index"] for s in after["steps"]] == [1, 2, 3]
    runs = lambda job: [s for s in job["steps"] if "] RUN " in s["name"]]  # noqa: E731
    assert [s["cached"] for s in runs(before)] == [False, False]
    assert all(s["seconds"] >= 0.3 for s in runs(before)), runs(before)
    assert [s["cached"] for s in runs(after)] == [True, True]
    assert after["cache"] == {"steps": 3, "cached": sum(s["cached"] for s in after["steps"])}
    assert after["cache"]["cached"] >= 2 and before["cache"]["cached"] < after["cache"]["cached"]

    manifest = registry.get_image_manifest(REGISTRY_ADDR, REPO, second.image_digest)
    assert after["image"] == {"sizeBytes": sum(layer["size"] for layer in manifest["layers"]),
                              "layers": len(manifest["layers"]), "platform": "linux/amd64"}
    for job in (before, after):
        for phase in ("queuedSeconds", "fetchSeconds", "buildSeconds", "pushSeconds"):
            assert isinstance(job[phase], float) and job[phase] >= 0, (phase, job[phase])
        assert job["durationSeconds"] >= job["fetchSeconds"] + job["buildSeconds"]

    (callback,) = receiver.wait_for(second_id)
    assert {k: callback.json[k] for k in ("image", "steps", "cache", "buildSeconds")} == {
        k: after[k] for k in ("image", "steps", "cache", "buildSeconds")
    }


def test_the_settings_choose_the_attestations_buildctl_is_asked_for(tmp_path):
    request = buildkit.BuildRequest(context_dir=tmp_path, dockerfile_dir=tmp_path, dockerfile_name="Dockerfile",
                                    repository="127.0.0.1:5000/u/p", cache_ref=None, metadata_file=tmp_path / "m.json",
                                    metadata={JOB_ID_KEY: "job-1"})

    def asked(**overrides) -> tuple[list[str], str]:
        with override_settings(**overrides):
            argv, _ = buildkit.command(request)
        attest = [value for flag, value in zip(argv, argv[1:]) if flag == "--opt" and value.startswith("attest:")]
        return attest, argv[argv.index("--output") + 1]

    attest, output = asked(ATTEST_PROVENANCE="max", ATTEST_SBOM=True, SBOM_SCANNER_IMAGE="")
    assert attest == ["attest:provenance=mode=max", "attest:sbom="]
    assert f"annotation-index.{JOB_ID_KEY}=job-1" in output
    attest, _ = asked(ATTEST_PROVENANCE="min", ATTEST_SBOM=True, SBOM_SCANNER_IMAGE="registry:5000/hubfly/sbom:1")
    assert attest == ["attest:provenance=mode=min", "attest:sbom=generator=registry:5000/hubfly/sbom:1"]
    # Both off (the test environment's setting): a plain manifest, annotated all the same.
    attest, output = asked(ATTEST_PROVENANCE="off", ATTEST_SBOM=False)
    assert attest == [] and "annotation-index." not in output and f"annotation.{JOB_ID_KEY}=job-1" in output
