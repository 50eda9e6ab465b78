"""The BuildKit frontend a Dockerfile may select (`# syntax=<image>`): only repositories listed
in BUILD_FRONTEND_ALLOW, checked on the Dockerfile buildctl would be given, before it runs.

The directive parser is tested on its own against BuildKit's spellings; the end-to-end test
submits a job through the API to a real worker, buildkitd and registry.
"""

import json
import subprocess
import uuid

import pytest

from builds import errors
from builds.errors import UserError
from builds.services.steps import dockerfile_choice
from builds.services.steps.dockerfile_choice import check_frontend, frontend_references, normalised_repository
from hubfly.env import ConfigError
from tests.support.jobs import log_text, submit, wait_final

BASE = "FROM debian:bookworm-slim\n"


class Log:
    """Collects what prepare() would write to the job log."""

    def __init__(self):
        self.text = []

    def line(self, text):
        self.text.append(text)

    def lines(self, text):
        self.text.extend(text.splitlines())


def refusal(text: str) -> UserError:
    with pytest.raises(UserError) as caught:
        check_frontend(text.encode())
    return caught.value


# --- Detecting the directive ---------------------------------------------------------------------

@pytest.mark.parametrize("text", [
    "# syntax=evil.example/frontend:1\n" + BASE,
    "#syntax=evil.example/frontend:1\n" + BASE,
    "# SYNTAX = evil.example/frontend:1\n" + BASE,
    "#\tSyntax\t=\tevil.example/frontend:1\t\n" + BASE,
    "#   syntax   =   evil.example/frontend:1   \r\n" + BASE,
    "\ufeff# syntax=evil.example/frontend:1\n" + BASE,
    "#!/usr/bin/env buildctl\n# syntax=evil.example/frontend:1\n" + BASE,
    "# escape=`\n# check=skip=all\n# syntax=evil.example/frontend:1\n" + BASE,
    "// syntax=evil.example/frontend:1\n" + BASE,
    "# syntax=evil.example/frontend:1 --some-argument\n" + BASE,
    "# a comment\n\n# syntax=evil.example/frontend:1\n" + BASE,  # BuildKit ignores this one; we check it
    json.dumps({"syntax": "evil.example/frontend:1"}),
])
def test_every_spelling_of_the_directive_is_found(text):
    assert frontend_references(text.encode()) == ["evil.example/frontend:1"]


@pytest.mark.parametrize("text", [
    BASE,
    BASE + "# syntax=evil.example/frontend:1\n",  # after an instruction: a comment
    "FROM debian:bookworm-slim\nRUN echo '# syntax=evil.example/frontend:1'\n",
    "# check=skip=all\n" + BASE,
    "# syntax=\n" + BASE,
    "",
])
def test_text_that_selects_no_frontend_yields_none(text):
    assert frontend_references(text.encode()) == []


def test_every_directive_line_is_checked_not_only_the_first():
    text = "# syntax=docker/dockerfile:1\n# syntax=evil.example/frontend:1\n" + BASE
    assert refusal(text).code == errors.FRONTEND_NOT_ALLOWED


@pytest.mark.parametrize("reference, repository", [
    ("docker/dockerfile", "docker.io/docker/dockerfile"),
    ("docker/dockerfile:1.7", "docker.io/docker/dockerfile"),
    ("docker.io/docker/dockerfile:1", "docker.io/docker/dockerfile"),
    ("index.docker.io/docker/dockerfile:1", "docker.io/docker/dockerfile"),
    ("docker/dockerfile@sha256:" + "a" * 64, "docker.io/docker/dockerfile"),
    ("docker/dockerfile:1@sha256:" + "a" * 64, "docker.io/docker/dockerfile"),
    ("dockerfile", "docker.io/library/dockerfile"),
    ("Docker/dockerfile", "Docker/dockerfile"),  # an upper-case first part is a registry host
    ("localhost:5000/docker/dockerfile", "localhost:5000/docker/dockerfile"),
    ("docker/Dockerfile", None),
    ("docker/dockerfile:1\tx", None),
    ("\x0bdocker/dockerfile", None),
    ("", None),
])
def test_references_are_normalised_as_buildkit_resolves_them(reference, repository):
    assert normalised_repository(reference) == repository


# --- The allowlist -------------------------------------------------------------------------------

@pytest.mark.parametrize("reference", [
    "docker/dockerfile", "docker/dockerfile:1", "docker/dockerfile:1.7-labs", "docker.io/docker/dockerfile:1",
    "index.docker.io/docker/dockerfile:1", "docker/dockerfile@sha256:" + "0" * 64,
])
def test_the_default_allowlist_accepts_docker_dockerfile_by_any_name(reference):
    check_frontend(f"# syntax={reference}\n{BASE}".encode())


@pytest.mark.parametrize("reference", [
    "evil.example/frontend:1", "docker/dockerfile-upstream:master", "docker.io/dockerfile:1",
    "localhost:5000/docker/dockerfile:1", "Docker/dockerfile:1", "docker/dockerfile:1\x0b", "docker/Dockerfile",
    "INDEX.DOCKER.IO/docker/dockerfile:1",
])
def test_other_frontends_are_refused_with_a_user_error(reference):
    error = refusal(f"# syntax={reference}\n{BASE}")
    assert error.code == errors.FRONTEND_NOT_ALLOWED and not error.retryable
    assert "not allowed" in error.message


def test_the_allowlist_is_configurable(settings):
    settings.BUILD_FRONTEND_ALLOW = ["registry.example:5000/team/frontend", "docker.io/docker/dockerfile"]
    check_frontend(b"# syntax=registry.example:5000/team/frontend:2\n" + BASE.encode())
    check_frontend(b"# syntax=docker/dockerfile:1\n" + BASE.encode())
    assert refusal("# syntax=registry.example:5000/team/other:2\n" + BASE).code == errors.FRONTEND_NOT_ALLOWED


def test_an_allowlist_entry_with_a_tag_is_a_configuration_error(settings):
    settings.BUILD_FRONTEND_ALLOW = ["docker/dockerfile:1"]
    with pytest.raises(ConfigError, match="BUILD_FRONTEND_ALLOW"):
        check_frontend(BASE.encode())


def test_a_long_directive_line_is_read_in_linear_time():
    check_frontend(b"# syntax=docker/dockerfile:1" + b" " * 500_000 + b"x\n" + BASE.encode())
    assert refusal("# syntax=a" + " " * 500_000 + "b\n" + BASE).code == errors.FRONTEND_NOT_ALLOWED


# --- Where the check runs ------------------------------------------------------------------------

def test_prepare_refuses_the_repository_dockerfile_before_handing_it_over(tmp_path):
    checkout, out = tmp_path / "src", tmp_path / "out"
    checkout.mkdir()
    (checkout / "Dockerfile").write_text("# syntax=evil.example/frontend:1\n" + BASE)
    with pytest.raises(UserError) as caught:
        dockerfile_choice.prepare(checkout=checkout, build_config={}, working_dir="", out_dir=out, log=Log())
    assert caught.value.code == errors.FRONTEND_NOT_ALLOWED
    assert not (out / "Dockerfile").exists()


def test_prepare_accepts_an_allowed_frontend(tmp_path):
    checkout = tmp_path / "src"
    checkout.mkdir()
    (checkout / "Dockerfile").write_text("# syntax=docker/dockerfile:1\n" + BASE)
    inputs = dockerfile_choice.prepare(checkout=checkout, build_config={}, working_dir="", out_dir=tmp_path / "out", log=Log())
    assert (inputs.dockerfile_dir / "Dockerfile").read_text().startswith("# syntax=docker/dockerfile:1")


def test_prepare_checks_a_generated_dockerfile_too(tmp_path, monkeypatch):
    checkout = tmp_path / "src"
    checkout.mkdir()
    (checkout / "index.html").write_text("<p>hi</p>")
    real_plan = dockerfile_choice.generate(app_dir=checkout, checkout=checkout, build_config={"isAutoBuild": True})
    tampered = real_plan.__class__(**{**real_plan.as_dict(), "warnings": (),
                                      "dockerfile": "# syntax=evil.example/frontend:1\n" + real_plan.dockerfile})
    # A stand-in generator: ours never writes a syntax line, but the check must not rely on that.
    monkeypatch.setattr(dockerfile_choice, "generate", lambda **kwargs: tampered)
    with pytest.raises(UserError) as caught:
        dockerfile_choice.prepare(checkout=checkout, build_config={"isAutoBuild": True}, working_dir="",
                            out_dir=tmp_path / "out", log=Log())
    assert caught.value.code == errors.FRONTEND_NOT_ALLOWED


# --- End to end ----------------------------------------------------------------------------------

def buildkit_history(infra) -> str:
    """Every build record buildkitd keeps, with the build args each build was given."""
    result = subprocess.run(["buildctl", "--addr", infra["buildkit"], "debug", "histories", "--format", "{{json .}}"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.mark.e2e
@pytest.mark.usefixtures("live_db")
def test_job_naming_another_frontend_fails_before_anything_reaches_buildkit(api, worker, infra, git_server):
    repo = git_server.repo(f"frontend-{uuid.uuid4().hex[:6]}")
    repo.commit({"Dockerfile": "# syntax=evil.example/frontend:1\n" + BASE})
    # A build arg of its own marks each job's build in BuildKit's history (images are pushed by
    # digest, so the job id is not in the record).
    refused_mark, allowed_mark = f"refused-{uuid.uuid4().hex}", f"allowed-{uuid.uuid4().hex}"
    refused = wait_final(submit(api, repo.url, env={"MARK": refused_mark}))
    assert refused.status == "failed" and refused.error_code == "FRONTEND_NOT_ALLOWED", refused.error
    assert refused.retry_count == 0 and "evil.example/frontend:1" in refused.error
    assert "building " not in log_text(api, refused.id)  # the pipeline's line right before buildctl

    # The same repository with the allowed frontend builds, and its build is in BuildKit's history
    # (so the history would show the refused job, had it been sent).
    repo.commit({"Dockerfile": "# syntax=docker/dockerfile:1\n" + BASE})
    allowed = wait_final(submit(api, repo.url, env={"MARK": allowed_mark}), timeout=300)
    assert allowed.status == "success", allowed.error
    history = buildkit_history(infra)
    assert allowed_mark in history and refused_mark not in history
