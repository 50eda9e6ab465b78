"""Secrets stay secret (issue 10, item 6): masked on every line of the log, encrypted at rest in
the job row with SECRETS_KEY, readable by the build, removed by log retention."""

import hashlib
import importlib
import json
import os
import secrets
import subprocess
import sys
import uuid
from datetime import timedelta

import pytest
from django.conf import settings as django_settings
from django.db import connection
from django.utils import timezone

from builds import presentation
from builds.joblog import masking, reader, writer
from builds.models import CallbackEvent, Job
from builds.services import jobs
from builds.services.operations import housekeeping
from builds.services.pipeline import BuildDirector
from tests.conftest import REPO_ROOT

PEM = (
    "-----BEGIN OPENSSH PRIVATE KEY-----\n"
    "b3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQAAAAAAAAABAAAAMwAAAAtzc2gtZW\n"
    "QyNTUxOQAAACBmJ0p4pEk3Ky0BdPf5rEkNf8w8rW0uQ3qVZ1hK9vYcVwAAAJgKq1cXCqtX\n"
    "FwAAAAtzc2gtZWQyNTUxOQAAACBmJ0p4pEk3Ky0BdPf5rEkNf8w8rW0uQ3qVZ1hK9vYcVw\n"
    "Zw==\n"
    "-----END OPENSSH PRIVATE KEY-----\n"
)


def request(job_id: str, **env) -> dict:
    return {
        "id": job_id, "projectId": "p", "userId": "u", "sourceType": "git",
        "sourceInfo": {"gitRepository": "http://127.0.0.1:9/app.git"},
        "buildConfig": {"env": {"NODE_ENV": "production", **env}, "secrets": sorted(env)},
    }


def legacy_fingerprint(data: dict) -> str:
    """How earlier versions fingerprinted a request: secret values included."""
    return hashlib.sha256(json.dumps(data, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def raw_row(job_id: str) -> str:
    """Every column of the job's row as the database holds it."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT * FROM builds_job WHERE id = %s", [job_id])
        return repr(cursor.fetchone())


def test_a_secret_printed_over_several_lines_is_masked_on_every_line(db):
    Job.objects.create(id="pem", project_id="p", user_id="u", request_fingerprint="-")
    log = writer.LogWriter("pem", masking.Masker([PEM, "short-token"]))
    log.lines("cat ~/.ssh/id_ed25519\n" + PEM + "  " + PEM.splitlines()[2] + "  (indented)\ndone")
    log.flush()
    text = b"".join(reader.read_from("pem", 0, writer.log_end("pem"))).decode()
    for line in PEM.splitlines():
        assert line not in text
    assert "cat ~/.ssh/id_ed25519" in text and "done" in text and "(indented)" in text
    assert masking.Masker([PEM])(PEM) == masking.MASK


@pytest.mark.django_db
def test_secret_values_are_encrypted_in_the_job_row(api):
    response = api.post("/api/v1/jobs", request("enc", NPM_TOKEN="npm-s3cret-value", SSH_KEY=PEM), format="json")
    assert response.status_code == 201, response.content
    row = raw_row("enc")
    assert "npm-s3cret-value" not in row and "s3cret" not in row
    for line in PEM.splitlines():
        assert line not in row and line.encode().hex() not in row
    assert "production" in row  # non-secret values stay readable
    job = response.json()
    assert job["buildConfig"]["env"] == {"NODE_ENV": "production", "NPM_TOKEN": "***", "SSH_KEY": "***"}
    assert job["buildConfig"]["secrets"] == ["NPM_TOKEN", "SSH_KEY"]
    assert "npm-s3cret-value" not in api.get("/api/v1/jobs/enc").content.decode()


@pytest.mark.django_db
def test_the_same_request_with_secrets_again_is_the_same_job_and_another_value_a_conflict(api):
    first = api.post("/api/v1/jobs", request("idem", TOKEN="value-one"), format="json")
    assert first.status_code == 201
    again = api.post("/api/v1/jobs", request("idem", TOKEN="value-one"), format="json")
    assert again.status_code == 200 and again.json()["id"] == "idem"
    other = api.post("/api/v1/jobs", request("idem", TOKEN="value-two"), format="json")
    assert other.status_code == 409 and other.json()["error"] == "JOB_EXISTS"
    assert Job.objects.count() == 1


@pytest.mark.django_db
def test_the_build_gets_the_decrypted_values(api):
    api.post("/api/v1/jobs", request("plain", TOKEN="value-one", SSH_KEY=PEM), format="json")
    director = BuildDirector(Job.objects.get(pk="plain"), uuid.uuid4())
    assert director.secrets == {"TOKEN": "value-one", "SSH_KEY": PEM}
    assert director.build_args == {"NODE_ENV": "production"}
    assert director.log.masker("value-one") == masking.MASK


def key() -> str:
    return secrets.token_urlsafe(32)


@pytest.mark.django_db
def test_old_keys_still_decrypt_after_a_rotation_and_a_lost_key_is_a_clear_error(api, settings):
    old, new = key(), key()
    settings.SECRETS_KEYS = [old]
    api.post("/api/v1/jobs", request("rot", TOKEN="rotated-value"), format="json")
    job = Job.objects.get(pk="rot")
    settings.SECRETS_KEYS = [new, old]
    assert jobs.job_secrets(job) == {"TOKEN": "rotated-value"}
    settings.SECRETS_KEYS = [new]
    with pytest.raises(jobs.SecretsUnreadable) as raised:
        jobs.job_secrets(job)
    assert raised.value.code == "SECRETS_UNREADABLE" and "SECRETS_KEY" in raised.value.message
    # The same body again cannot be compared with unreadable values: a conflict, not a 500.
    assert api.post("/api/v1/jobs", request("rot", TOKEN="rotated-value"), format="json").status_code == 409


@pytest.mark.parametrize("value", ["short", "x" * 43 + "!", key() + "," + "tooshort"])
def test_a_bad_secrets_key_stops_the_process_at_start_naming_the_variable(value):
    result = subprocess.run([sys.executable, "manage.py", "check"], cwd=REPO_ROOT, capture_output=True, text=True,
                            env={**os.environ, "SECRETS_KEY": value}, timeout=120)
    assert result.returncode != 0
    assert "SECRETS_KEY" in result.stderr and value not in result.stderr


def test_a_generated_secrets_key_is_kept_in_the_data_dir_readable_by_its_owner_only():
    path = django_settings.DATA_DIR / "secrets-key"
    assert path.read_text().strip() == django_settings.SECRETS_KEYS[0]
    assert path.stat().st_mode & 0o777 == 0o600


@pytest.mark.django_db(transaction=True)
def test_a_worker_with_another_key_fails_the_job_clearly():
    """A worker process whose SECRETS_KEY cannot decrypt the job's secrets (a key replaced
    without keeping the old one) fails the job with SECRETS_UNREADABLE, without retries. The
    job is never queued, so only that process (not a session worker) can take it."""
    job_id = f"lost-key-{uuid.uuid4().hex[:8]}"
    build_config = {"env": {"NODE_ENV": "production"}, "secrets": ["TOKEN"]}
    Job.objects.create(id=job_id, project_id="p", user_id="u", request_fingerprint="-", build_config=build_config,
                       source_info={"gitRepository": "http://127.0.0.1:9/app.git"},
                       secret_values=jobs.seal_secrets({"TOKEN": "unreadable-value"}))
    code = f"from builds.services import pipeline; pipeline.run_job({job_id!r})"
    result = subprocess.run([sys.executable, "manage.py", "shell", "-c", code], cwd=REPO_ROOT, capture_output=True,
                            text=True, env={**os.environ, "SECRETS_KEY": key()}, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]  # the job fails, the task does not
    job = Job.objects.get(pk=job_id)
    assert job.status == "failed" and job.error_code == "SECRETS_UNREADABLE" and job.retry_count == 0
    assert "SECRETS_KEY" in job.error
    text = b"".join(reader.read_from(job_id, 0, writer.log_end(job_id))).decode()
    assert "SECRETS_UNREADABLE" in text and "unreadable-value" not in text


@pytest.mark.django_db
def test_retention_removes_old_secret_values_and_callback_bodies(api):
    long_ago = timezone.now() - timedelta(days=django_settings.LOG_RETENTION_DAYS + 1)
    for job_id in ("old-done", "recent-done", "old-pending-hook"):
        api.post("/api/v1/jobs", request(job_id, TOKEN="kept-or-not"), format="json")
    Job.objects.filter(pk__in=["old-done", "old-pending-hook"]).update(status="success", finished_at=long_ago)
    Job.objects.filter(pk="recent-done").update(status="success", finished_at=timezone.now())
    for job_id, state in (("old-done", "delivered"), ("recent-done", "delivered"), ("old-pending-hook", "pending")):
        CallbackEvent.objects.create(job_id=job_id, url="http://127.0.0.1:9/hook", body='{"id": "%s"}' % job_id,
                                     state=state, next_attempt_at=timezone.now())

    housekeeping.prune()

    old = Job.objects.get(pk="old-done")
    assert old.secret_values == "" and CallbackEvent.objects.get(job=old).body == ""
    with pytest.raises(jobs.SecretsUnreadable):
        jobs.job_secrets(old)
    recent = Job.objects.get(pk="recent-done")
    assert jobs.job_secrets(recent) == {"TOKEN": "kept-or-not"} and CallbackEvent.objects.get(job=recent).body
    # A delivery still due keeps the bytes it must send.
    assert CallbackEvent.objects.get(job_id="old-pending-hook").body
    # The job still presents its settings, masked.
    assert presentation.job_json(old)["buildConfig"]["env"] == {"NODE_ENV": "production", "TOKEN": "***"}


@pytest.mark.django_db
def test_migration_encrypts_secrets_stored_in_plain_text_by_earlier_versions(api):
    migration = importlib.import_module("builds.migrations.0003_job_secret_values")
    data = request("legacy", TOKEN="legacy-plain-value")
    data["buildConfig"]["isAutoBuild"] = False
    Job.objects.create(id="legacy", project_id="p", user_id="u", source_info=data["sourceInfo"],
                       build_config=data["buildConfig"], request_fingerprint=legacy_fingerprint(data))
    from django.apps import apps

    migration.encrypt_plain_secrets(apps, None)
    job = Job.objects.get(pk="legacy")
    assert job.secret_values and jobs.job_secrets(job) == {"TOKEN": "legacy-plain-value"}
    # Until the earlier release is gone its workers read the plain value: it stays (README, Upgrading).
    assert job.build_config["env"]["TOKEN"] == "legacy-plain-value"
    # The client's retry of that request still finds its job, before and after the seal.
    assert api.post("/api/v1/jobs", data, format="json").status_code == 200
    assert jobs.jobs_seal_plain_secrets() >= 1
    assert "legacy-plain-value" not in raw_row("legacy")
    assert jobs.job_secrets(Job.objects.get(pk="legacy")) == {"TOKEN": "legacy-plain-value"}
    assert api.post("/api/v1/jobs", data, format="json").status_code == 200
    assert jobs.jobs_seal_plain_secrets() == 0


@pytest.mark.django_db
def test_a_job_an_earlier_release_wrote_during_an_upgrade_is_built_with_its_plain_secrets(api):
    data = request("written-by-old-web", TOKEN="plain-during-upgrade")
    data["buildConfig"]["isAutoBuild"] = False  # as validated: the fingerprint hashes that
    Job.objects.create(id="written-by-old-web", project_id="p", user_id="u", source_info=data["sourceInfo"],
                       build_config=data["buildConfig"], request_fingerprint=legacy_fingerprint(data))
    job = Job.objects.get(pk="written-by-old-web")
    assert job.secret_values == ""
    assert jobs.job_secrets(job) == {"TOKEN": "plain-during-upgrade"}
    assert presentation.job_json(job)["buildConfig"]["env"]["TOKEN"] == "***"
    assert api.post("/api/v1/jobs", data, format="json").status_code == 200
    other = request("written-by-old-web", TOKEN="another-value")
    other["buildConfig"]["isAutoBuild"] = False
    assert api.post("/api/v1/jobs", other, format="json").status_code == 409
    jobs.jobs_seal_plain_secrets()
    assert "plain-during-upgrade" not in raw_row("written-by-old-web")
    assert jobs.job_secrets(Job.objects.get(pk="written-by-old-web")) == {"TOKEN": "plain-during-upgrade"}
