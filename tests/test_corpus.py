"""Zero-config builds of real starter apps (issue 13): apps nobody here wrote, as platforms
publish them for their users (tests/corpus/README.md says where each comes from; each archive
holds its licence). Each is unpacked, committed into a repository of the test git server and
built with nothing but `{"isAutoBuild": true}` (the monorepo's apps with sourceInfo.workingDir); the
image is run under runc and must answer HTTP on its port as a non-root user.

An app that cannot build on this machine for a reason outside the product is listed with that
reason (OUTSIDE), and the job must then fail with a user error naming what is missing.

The worker reads the zero-config tests' copy of configs/runtimes.json (runtimes_for_tests) with
one change: a runtime's default line is the newest one this machine can make (Node 22, Python
3.11, Rust 1.85, PHP 8.2), as an operator sets defaults to images their registry has.

Each app's plan, result, build seconds and image size are printed and written to
artifacts/corpus.txt.
"""

import json
import shutil
import tarfile
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from builds.models import Job
from tests.conftest import ARTIFACTS, CACHE_DIR, REPO_ROOT, TEST_ROOT, Worker
from tests.support import containers, registry
from tests.support.baseimages import ensure_base_images, mirror_repository, runtimes_for_tests
from tests.support.gitserver import git
from tests.support.jobs import new_id, wait_final
from tests.test_zeroconfig import job_log

pytestmark = [pytest.mark.e2e, pytest.mark.downloads, pytest.mark.corpus, pytest.mark.django_db(transaction=True),
              pytest.mark.timeout(1800)]

CORPUS = Path(__file__).parent / "corpus"
USER_ID = "tester"
# Base images the apps build on, made before the first build (see tests/support/baseimages.py).
IMAGES = ("debian", "node", "node-22", "python", "python-full", "nginx", "golang-1.24", "maven", "openjdk-jre",
          "rust", "deno", "composer", "php-apache")


@dataclass(frozen=True)
class App:
    archive: str  # in tests/corpus/, without .tar.gz
    working_dir: str | None = None
    port: int | None = None  # where the image answers HTTP
    body: str = ""  # text the answer to GET / holds
    outside: str | None = None  # why it cannot build here, when the reason is not the product's
    error_code: str | None = None  # the job's error code then
    names: tuple[str, ...] = field(default=())  # what the error (or its log) must name then
    warning: str | None = None  # a warning the job must carry when it succeeds
    defect: str | None = None  # a known defect of the product that keeps it from serving (xfail, strict)

    @property
    def id(self) -> str:
        return self.archive.split("--", 1)[-1] + (f"-{self.working_dir}" if self.working_dir else "")


APPS = (
    App("render-examples--express-hello-world", port=3001, body="Hello from Render!"),
    App("render-examples--flask-hello-world", port=8000, body="Hello, World!"),
    # Its settings name STATIC_ROOT only on Render: collectstatic is skipped with a warning.
    App("render-examples--django", port=8000, body="Hello Django on Render!", warning="collectstatic skipped"),
    App("render-examples--create-react-app", port=8080, body='<div id="root"></div>'),
    App("render-examples--sveltekit", port=3000, body="<title>Home</title>"),
    App("render-examples--nextjs-hello-world", port=3000, body="__next"),  # `next start`
    App("railwayapp-templates--monorepo-example", working_dir="backend",
        outside="its own Dockerfile (used before zero-config) runs on gcr.io/distroless/static, a registry "
                "whose host does not resolve on this machine",
        error_code="EGRESS_REFUSED", names=("gcr.io/distroless/static",)),
    App("railwayapp-templates--monorepo-example", working_dir="frontend", port=8080, body='<div id="root">'),
    App("heroku--java-getting-started", port=8080, body="Getting Started"),
    App("heroku--php-getting-started",  # PHP ^8.1: the default line 8.2
        outside="composer downloads its packages' archives from GitHub (api.github.com), which this machine "
                "cannot reach",
        error_code="BUILD_STEP_FAILED", names=("composer install", "api.github.com")),
    App("heroku--python-getting-started",
        outside="Python 3.14 (its .python-version) is shipped by no package registry reachable here, so "
                "its images cannot be made",
        error_code="BASE_IMAGE_NOT_FOUND", names=("python:3.14",)),
    App("heroku--ruby-getting-started",
        outside="Ruby 3.4 (its Gemfile.lock) is in no reachable registry, and gems come from RubyGems, "
                "which this machine cannot reach",
        error_code="BASE_IMAGE_NOT_FOUND", names=("ruby:3.4",)),
    App("railwayapp-templates--rust-starter", port=3000, body="Hello, World!"),
    App("railwayapp-templates--deno",
        outside="it imports its server from deno.land, which this machine cannot reach",
        error_code="BUILD_STEP_FAILED", names=("deno install", "deno.land")),
    # Built by test_hugo_site_fetches_its_theme_submodule_and_is_served: `git archive` drops the
    # theme's gitlink, and its upstream (GitHub) cannot be reached here.
)
RESULTS: list[str] = []


@pytest.fixture(scope="module")
def corpus_worker(worker, infra):
    """A worker on the test copy of configs/runtimes.json with defaults made here (see the module
    doc); the session's worker is stopped meanwhile, as in test_zeroconfig."""
    runtimes = corpus_runtimes(json.loads((REPO_ROOT / "configs" / "runtimes.json").read_text()))
    path = TEST_ROOT / "runtimes-corpus.json"
    path.write_text(json.dumps(runtimes, indent=1))
    ensure_base_images(infra["registry"], CACHE_DIR, infra["buildkit"], images=IMAGES)
    worker.stop()
    # A cold install of a large dependency tree (create-react-app: yarn, ~1,500 packages) passed the
    # default 15-minute job timeout on 2 cores shared with other test sessions: the operator's
    # default is raised, the apps' buildConfig stays `isAutoBuild` alone.
    corpus = Worker("corpus", concurrency=1,
                    extra_env={"RUNTIMES_FILE": str(path), "DEFAULT_TIMEOUT_SECONDS": "2400"})
    try:
        yield corpus
    finally:
        corpus.stop()
        worker.start()
        ARTIFACTS.mkdir(exist_ok=True)
        (ARTIFACTS / "corpus.txt").write_text("\n".join(RESULTS) + "\n")


def corpus_runtimes(upstream: dict) -> dict:
    runtimes = runtimes_for_tests(upstream)
    for name, line in (("node", "22"), ("python", "3.11"), ("rust", "1.85"), ("php", "8.2")):
        if line in runtimes[name]["versions"]:
            runtimes[name]["default"] = line
    return runtimes


def unpacked(git_server, archive: str):
    """The archive as one commit of a new repository (file modes kept: mvnw stays executable)."""
    repo = git_server.repo(f"{archive.split('--', 1)[1]}-{uuid.uuid4().hex[:6]}")
    with tarfile.open(CORPUS / f"{archive}.tar.gz") as tar:
        tar.extractall(repo.work, filter="data")
    git("add", "-A", cwd=repo.work)
    git("commit", "-q", "-m", f"{archive} as published", cwd=repo.work)
    git("push", "-q", str(repo.bare), "main:main", cwd=repo.work)
    return repo


def submit(api, repo, app: App) -> Job:
    job_id = new_id("corpus")
    source_info = {"gitRepository": repo.url, **({"workingDir": app.working_dir} if app.working_dir else {})}
    response = api.post("/api/v1/jobs", {
        "id": job_id, "projectId": f"corpus-{app.id}", "userId": USER_ID, "sourceType": "git",
        "sourceInfo": source_info, "buildConfig": {"isAutoBuild": True},
    }, format="json")
    assert response.status_code == 201, response.content
    return wait_final(job_id, timeout=1500)


def image_size(registry_addr: str, image_tag: str) -> int:
    repo, _, tag = image_tag.split("/", 1)[1].rpartition(":")
    manifest = registry.get_image_manifest(registry_addr, repo, tag)
    return sum(layer["size"] for layer in manifest["layers"])


def plan_line(log: str) -> str:
    """The generator's summary and its plan (package manager, commands), as the log gives them."""
    found = [line.split("] ", 1)[-1] for line in log.splitlines()
             if "generated a Dockerfile for" in line or line.split("] ", 1)[-1].startswith("plan: ")]
    return " | ".join(found[:2]) or "-"


@pytest.mark.parametrize("app", [
    pytest.param(app, id=app.id, marks=[pytest.mark.xfail(strict=True, reason=app.defect)] if app.defect else [])
    for app in APPS])
def test_corpus_app_builds_and_serves_or_fails_naming_what_is_missing(app, api, corpus_worker, git_server, infra,
                                                                      capsys):
    repo = unpacked(git_server, app.archive)
    check_app(app, repo, api, infra, capsys)


# A stand-in for the Ananke theme (GitHub is out of reach): the layouts a home page needs.
THEME = {
    "layouts/_default/baseof.html": "<!doctype html><html><head><title>{{ .Site.Title }}</title></head>"
                                    "<body>{{ block \"main\" . }}{{ end }}</body></html>\n",
    "layouts/index.html": "{{ define \"main\" }}<h1>{{ .Site.Title }}</h1><p>theme: stand-in ananke</p>"
                          "{{ range .Site.RegularPages }}<a href=\"{{ .RelPermalink }}\">{{ .Title }}</a>{{ end }}"
                          "{{ end }}\n",
    "layouts/_default/single.html": "{{ define \"main\" }}<h1>{{ .Title }}</h1>{{ .Content }}{{ end }}\n",
    "layouts/_default/list.html": "{{ define \"main\" }}{{ range .Pages }}{{ .Title }}{{ end }}{{ end }}\n",
}


def with_submodule(git_server, archive: str, path: str, url: str, sha: str):
    """The archive's tree with the submodule at `path` restored: a gitlink to `sha` and its
    .gitmodules entry pointing at `url`."""
    repo = unpacked(git_server, archive)
    git("config", "--file", ".gitmodules", f"submodule.{path}.url", url, cwd=repo.work)
    git("update-index", "--add", "--cacheinfo", f"160000,{sha},{path}", cwd=repo.work)
    git("add", ".gitmodules", cwd=repo.work)
    git("commit", "-q", "-m", "the theme as a submodule", cwd=repo.work)
    git("push", "-q", str(repo.bare), "main:main", cwd=repo.work)
    return repo


HUGO = App("render-examples--hugo-quick-start", port=8080, body="<title>Deploy Hugo on Render</title>")


def test_hugo_site_fetches_its_theme_submodule_and_is_served(api, corpus_worker, git_server, infra, capsys):
    ensure_base_images(infra["registry"], CACHE_DIR, infra["buildkit"], images=("debian", "hugo"))  # a compile: minutes
    theme = git_server.repo(f"ananke-{uuid.uuid4().hex[:6]}")
    theme_sha = theme.commit(THEME)
    site = with_submodule(git_server, HUGO.archive, "themes/ananke", f"../{theme.name}.git", theme_sha)
    job = check_app(HUGO, site, api, infra, capsys)
    log = job_log(job.id)
    assert f"fetching submodule themes/ananke from {theme.url} at {theme_sha}" in log


@pytest.mark.parametrize("url, named", [
    ("file:///etc/hubfly-theme.git", "must be an https://"),
    ("http://10.1.2.3/theme.git", "non-public address"),
], ids=["file-url", "private-host"])
def test_hugo_submodule_on_a_refused_source_fails_the_job_naming_it(url, named, api, corpus_worker, git_server,
                                                                      infra):
    site = with_submodule(git_server, HUGO.archive, "themes/ananke", url, "1" * 40)
    job = submit(api, site, HUGO)
    assert job.status == "failed" and job.error_code == "SOURCE_REFUSED", (job.error_code, job.error)
    assert "submodule 'themes/ananke'" in job.error and named in job.error, job.error


def test_deno_server_is_detected_and_runs(api, corpus_worker, git_server, infra, capsys):
    """The corpus's Deno app imports from deno.land (out of reach here); this one uses Deno's own
    server and shows the Deno image and template work."""
    repo = git_server.repo(f"deno-{uuid.uuid4().hex[:6]}")
    repo.commit({"main.ts": 'Deno.serve({ port: Number(Deno.env.get("PORT") ?? "8000") }, () =>\n'
                            '  new Response(`hello from deno ${Deno.version.deno}\\n`));\n'})
    job = check_app(App("deno-serve", port=8000, body="hello from deno 2."), repo, api, infra, capsys)
    assert "generated a Dockerfile for deno 2" in job_log(job.id)


def check_app(app: App, repo, api, infra, capsys) -> Job:
    started = time.monotonic()
    job = submit(api, repo, app)
    seconds = time.monotonic() - started
    log = job_log(job.id)
    plan = plan_line(log)

    if app.outside:
        RESULTS.append(f"{app.id}: {job.status} [{job.error_code}] {job.error} ({seconds:.0f} s) | {plan} "
                       f"| outside the product: {app.outside}")
        with capsys.disabled():
            print(f"\n{RESULTS[-1]}")
        assert job.status == "failed", f"{app.id} built, though listed as impossible here: {app.outside}"
        assert job.error_code == app.error_code, f"[{job.error_code}] {job.error}\n{log[-4000:]}"
        for name in app.names:
            assert name in (job.error or "") or name in log, f"{name!r} is not named: {job.error}\n{log[-4000:]}"
        return job

    if job.status != "success":
        RESULTS.append(f"{app.id}: {job.status} [{job.error_code}] {job.error} ({seconds:.0f} s) | {plan}")
        with capsys.disabled():
            print(f"\n{RESULTS[-1]}")
        pytest.fail(f"{job.status} [{job.error_code}] {job.error}\n--- log tail ---\n{log[-8000:]}", pytrace=False)
    image_repo, _, tag = job.image_tag.split("/", 1)[1].rpartition(":")
    config = registry.get_image_config(infra["registry"], image_repo, tag)["config"]
    size = image_size(infra["registry"], job.image_tag)
    RESULTS.append(f"{app.id}: success ({seconds:.0f} s, {size / 1e6:.0f} MB compressed) | {plan} "
                   f"| CMD {config.get('Cmd')}")
    with capsys.disabled():
        print(f"\n{RESULTS[-1]}")
    if app.warning:
        assert any(app.warning in warning for warning in job.warnings), job.warnings
    assert config.get("User") not in (None, "", "root", "0", "0:0"), config
    assert f"{app.port}/tcp" in (config.get("ExposedPorts") or {}), config
    work = TEST_ROOT / "containers"
    work.mkdir(exist_ok=True)
    with containers.run_image(infra["registry"], image_repo, tag, work_dir=work,
                              base_cache=CACHE_DIR / "rootfs-bases") as (container, _, _):
        status, body = container.http_get(app.port, "/", timeout=120)
    assert status == 200 and app.body in body, (status, body[:2000])
    return job


# (image, Python line, has a compiler): the slim images as upstream's have none; the full ones
# (the build stage for native dependencies) have gcc and Python's headers.
PYTHON_IMAGES = (("python", "3.11", False), ("python-full", "3.11", True),
                 ("python-3.13", "3.13", False), ("python-3.13-full", "3.13", True))


def test_python_images_carry_a_compiler_and_headers_only_in_their_full_variant(infra):
    names = tuple(name for name, _, _ in PYTHON_IMAGES)
    ensure_base_images(infra["registry"], CACHE_DIR, infra["buildkit"], images=("debian", *names))
    work = TEST_ROOT / "containers"
    work.mkdir(exist_ok=True)
    for name, line, full in PYTHON_IMAGES:
        repo, tags = mirror_repository(name)
        bundle = Path(tempfile.mkdtemp(prefix="pyimage-", dir=work))
        try:
            with containers.image_rootfs(infra["registry"], repo, tags[0], bundle) as (rootfs, config):
                assert (rootfs / f"usr/bin/python{line}").exists(), name
                assert (rootfs / "usr/bin/gcc").exists() == full, f"{name}:{tags[0]} gcc present: {not full}"
                assert (rootfs / f"usr/include/python{line}/Python.h").is_file() == full, name
                assert not (rootfs / f"usr/lib/python{line}/EXTERNALLY-MANAGED").exists(), name
        finally:
            shutil.rmtree(bundle, ignore_errors=True)
