"""Hostile input (issue 5): a fuzzed create endpoint, and repositories that try to make the
builder read or write outside their checkout."""

import json
import os
import re
import uuid

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from builds.models import Job
from builds.services.steps import source_rules
from tests.support.gitserver import git
from tests.support.jobs import log_text, new_id, submit, wait_final

ID = re.compile(r"^[A-Za-z0-9._-]{1,128}$")

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=30),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=12), inner, max_size=3),
    max_leaves=6,
)
ids = st.from_regex(r"[A-Za-z0-9._-]{1,20}", fullmatch=True) | json_values
urls = st.sampled_from([
    "http://127.0.0.1:9/app.git", "https://localhost/a/b.git", "git@127.0.0.1:team/app.git",
    "ssh://git@localhost:2222/app.git", "file:///etc/passwd", "/srv/repo", "--upload-pack=id",
    "ext::sh -c id", "http://10.0.0.1/x.git", "http://169.254.169.254/x", "http://[::1]/x.git",
    "http://127.0.0.1:9/../../x", "http://user:pw@127.0.0.1:9/x.git", "ftp://127.0.0.1/x",
    "http://127.0.0.1:99999/x.git", "https://exa mple.invalid/x", "http://\x00/x",
]) | st.text(max_size=60) | json_values
refs = st.sampled_from(["main", "refs/heads/dev", "v1.0", "-x", "a..b", "a b", "a/", "@", "x.lock", ""]) | json_values
shas = st.from_regex(r"[0-9a-fA-F]{1,70}", fullmatch=True) | json_values
paths = st.sampled_from(["", "app", "apps/web", "../x", "/etc", "a/../../b", "a\\b", "-rf"]) | json_values
source_info = st.fixed_dictionaries(
    {}, optional={"gitRepository": urls, "ref": refs, "commitSha": shas, "workingDir": paths}
) | json_values
build_config = st.fixed_dictionaries({}, optional={
    "isAutoBuild": json_values, "runtime": st.sampled_from(["node", "python", "go", "cobol", "NODE"]) | json_values,
    "version": json_values, "buildCommand": st.sampled_from(["npm run build", "npm run build; rm -rf /", "$(id)"]) | json_values,
    "timeoutSeconds": json_values, "resourceLimits": json_values, "env": json_values, "secrets": json_values,
    "exposePort": json_values, "dockerfilePath": paths, "buildContextDir": paths,
}) | json_values
bodies = st.fixed_dictionaries({}, optional={
    "id": ids, "projectId": ids, "userId": ids, "sourceType": st.just("git") | json_values,
    "sourceInfo": source_info, "buildConfig": build_config, "status": json_values, "logPath": json_values,
}) | json_values


@pytest.mark.django_db
@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=bodies)
def test_no_input_to_create_gives_a_5xx_or_stores_an_invalid_job(api, body):
    before = set(Job.objects.values_list("pk", flat=True))
    raw = json.dumps(body)  # floats may be Infinity: not JSON, and the server must say so cleanly
    response = api.post("/api/v1/jobs", raw, content_type="application/json")
    assert response.status_code in (200, 201, 400, 409), (response.status_code, response.content)
    error = response.json()
    if response.status_code >= 400:
        assert error["error"] and error["message"]
        assert set(Job.objects.values_list("pk", flat=True)) == before
        return
    job = Job.objects.get(pk=error["id"])
    for value in (job.id, job.project_id, job.user_id):
        assert ID.match(value) and set(value) != {"."}
    repo = source_rules.parse_repository(job.source_info["gitRepository"])
    source_rules.check_host_allowed(repo)
    assert job.status == "pending" and not job.image_tag and job.retry_count == 0
    if job.source_info.get("ref"):
        source_rules.validate_ref(job.source_info["ref"])
    if job.source_info.get("commitSha"):
        source_rules.validate_commit(job.source_info["commitSha"])


BASE = "FROM debian:bookworm-slim\n"


@pytest.mark.parametrize("target", ["/etc/passwd", "../../../../../../etc/passwd"])
@pytest.mark.e2e
@pytest.mark.usefixtures("live_db")
def test_dockerfile_symlinked_to_a_host_file_is_refused(api, worker, git_server, target):
    repo = git_server.repo(f"symlink-{uuid.uuid4().hex[:6]}")
    repo.commit({"README": "x"})
    repo.symlink("Dockerfile", target)
    job = wait_final(submit(api, repo.url))
    assert job.status == "failed" and job.error_code == "DOCKERFILE_INVALID"
    assert "root:x:0:0" not in log_text(api, job.id)


@pytest.mark.e2e
@pytest.mark.usefixtures("live_db")
def test_dangling_dockerfile_symlink_never_writes_its_target(api, worker, git_server):
    victim = f"/tmp/hubfly-victim-{uuid.uuid4().hex}"
    repo = git_server.repo("dangling")
    repo.commit({"package.json": '{"name": "x", "scripts": {"start": "node index.js"}}', "index.js": ""})
    repo.symlink("Dockerfile", victim)
    job = wait_final(submit(api, repo.url, isAutoBuild=True))
    assert job.status == "failed" and job.error_code == "DOCKERFILE_INVALID"
    assert not os.path.lexists(victim)


@pytest.mark.parametrize("field", ["workingDir", "buildContextDir"])
@pytest.mark.e2e
@pytest.mark.usefixtures("live_db")
def test_directories_symlinked_out_of_the_checkout_are_refused(api, worker, git_server, field):
    repo = git_server.repo(f"escape-{field.lower()}")
    repo.commit({"Dockerfile": BASE})
    repo.symlink("app", "/etc")
    if field == "workingDir":
        job = wait_final(submit(api, repo.url, source={"workingDir": "app"}))
    else:
        job = wait_final(submit(api, repo.url, buildContextDir="app"))
    assert job.status == "failed" and job.error_code == "WORKING_DIR_INVALID"


@pytest.mark.e2e
@pytest.mark.usefixtures("live_db")
def test_submodule_pointing_at_a_local_path_is_never_fetched(api, worker, git_server, tmp_path):
    secret_repo = tmp_path / "secret"
    secret_repo.mkdir()
    git("init", "-q", "-b", "main", str(secret_repo), cwd=tmp_path)
    (secret_repo / "secret.txt").write_text("TOP-SECRET-CONTENT\n")
    git("add", "-A", cwd=secret_repo)
    git("-c", "user.name=t", "-c", "user.email=t@example.invalid", "commit", "-qm", "s", cwd=secret_repo)
    secret_sha = git("rev-parse", "HEAD", cwd=secret_repo)
    repo = git_server.repo("submodule")
    repo.commit({
        "Dockerfile": BASE + "ARG NONCE\nCOPY . /src\nRUN echo $NONCE; find /src -path /src/.git -prune -o -type f -print"
                      " -exec cat {} \\;\n",
        ".gitmodules": f'[submodule "sub"]\n\tpath = sub\n\turl = file://{secret_repo}\n',
    })
    git("update-index", "--add", "--cacheinfo", f"160000,{secret_sha},sub", cwd=repo.work)
    git("-c", "user.name=t", "-c", "user.email=t@example.invalid", "commit", "-qm", "add submodule", cwd=repo.work)
    git("push", "-q", str(repo.bare), "main:main", cwd=repo.work)
    job = wait_final(submit(api, repo.url, env={"NONCE": new_id()}))
    # Submodules are fetched under the source rules (issue 13): a file:// one fails the job.
    assert job.status == "failed" and job.error_code == "SOURCE_REFUSED", (job.error_code, job.error)
    assert "submodule 'sub'" in job.error
    assert "TOP-SECRET-CONTENT" not in log_text(api, job.id)
