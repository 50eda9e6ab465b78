"""The state machine itself (builds/services/state/lifecycle.py), without a worker: its table is the
one the code uses and the one docs/architecture.md shows, only lifecycle writes `status`, a
second claim loses, and a write under a lease that is no longer the job's changes nothing."""

import ast
import re
from pathlib import Path

import pytest

from builds import errors
from builds.models import Job, Status
from builds.services.state import lifecycle
from tests.support.jobs import new_id

REPO_ROOT = Path(__file__).resolve().parent.parent


def _job() -> Job:
    return Job.objects.create(id=new_id("lifecycle"), project_id="states", user_id="tester",
                              source_info={"gitRepository": "http://127.0.0.1:9/none.git"},
                              request_fingerprint="test")


def _documented_transitions() -> dict[str, set[str]]:
    text = (REPO_ROOT / "docs" / "architecture.md").read_text()
    table = text.split("## States", 1)[1].split("\n\n", 2)[1]
    documented: dict[str, set[str]] = {}
    for row in table.splitlines()[2:]:
        sources, targets = (re.findall(r"`(\w+)`", cell) for cell in row.split("|")[1:3])
        for source in sources:
            documented.setdefault(source, set()).update(targets)
    return documented


def test_the_documented_state_table_is_the_one_the_code_uses():
    assert _documented_transitions() == {str(k): {str(t) for t in v} for k, v in lifecycle.TRANSITIONS.items()}
    # Every writer in the table exists, and a final status is left by none.
    assert all(callable(getattr(lifecycle, name)) for name in lifecycle.MOVES)
    assert not set(lifecycle.TRANSITIONS) & {Status.SUCCESS, Status.FAILED, Status.CANCELED}


def _status_writes(path: Path) -> list[int]:
    """Lines where `path` sets a job's status: a `status=` argument of update/create calls, or an
    assignment to `.status`."""
    lines = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in (
                "update", "create", "get_or_create", "update_or_create", "bulk_update"):
            if any(keyword.arg == "status" for keyword in node.keywords):
                lines.append(node.lineno)
        if isinstance(node, ast.Assign | ast.AugAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if any(isinstance(t, ast.Attribute) and t.attr == "status" for t in targets):
                lines.append(node.lineno)
    return lines


def test_only_lifecycle_writes_a_jobs_status():
    writers = {}
    for path in sorted((REPO_ROOT / "builds").rglob("*.py")):
        if "migrations" in path.parts:
            continue
        if lines := _status_writes(path):
            writers[str(path.relative_to(REPO_ROOT))] = lines
    assert list(writers) == ["builds/services/state/lifecycle.py"], writers


@pytest.mark.django_db
def test_a_second_claim_loses():
    job = _job()
    first = lifecycle.job_claim(job_id=job.pk, worker="test:1")
    second = lifecycle.job_claim(job_id=job.pk, worker="test:2")
    job.refresh_from_db()
    assert first is not None and second is None
    assert (job.status, job.lease, job.worker, job.attempts) == (Status.CLAIMED, first, "test:1", 1)


@pytest.mark.django_db
def test_a_write_under_a_stale_lease_changes_nothing():
    job = _job()
    stale = lifecycle.job_claim(job_id=job.pk, worker="test:1")
    assert lifecycle.job_take_back(job_id=job.pk, lease=stale, reason="test", worker_gone=True) == "requeued"
    current = lifecycle.job_claim(job_id=job.pk, worker="test:2")
    assert current not in (None, stale)
    before = Job.objects.filter(pk=job.pk).values().get()

    assert not lifecycle.job_start_building(job_id=job.pk, lease=stale, commit_sha="0" * 40, image_tag="x:y")
    assert not lifecycle.job_heartbeat(job_id=job.pk, lease=stale)
    assert not lifecycle.job_fence(job_id=job.pk, lease=stale)
    assert not lifecycle.job_finish(job_id=job.pk, lease=stale, status=Status.SUCCESS, image_digest="sha256:" + "0" * 64)
    assert not lifecycle.job_retry_later(job_id=job.pk, lease=stale, error_code=errors.INFRASTRUCTURE_ERROR, error="x", delay_seconds=0)
    assert lifecycle.job_take_back(job_id=job.pk, lease=stale, reason="test", worker_gone=True) == "skipped"
    assert Job.objects.filter(pk=job.pk).values().get() == before


@pytest.mark.django_db
def test_each_writer_moves_only_from_its_start_states():
    job = _job()
    # Pending: not yet building, so the builder's writes have nothing to move.
    assert not lifecycle.job_start_building(job_id=job.pk, lease=None, commit_sha="", image_tag="")
    assert not lifecycle.job_finish(job_id=job.pk, lease=None, status=Status.SUCCESS)
    lease = lifecycle.job_claim(job_id=job.pk, worker="test:1")
    assert lifecycle.job_start_building(job_id=job.pk, lease=lease, commit_sha="0" * 40, image_tag="x:y")
    # Building: a second start is refused; the end is written once.
    assert not lifecycle.job_start_building(job_id=job.pk, lease=lease, commit_sha="0" * 40, image_tag="x:y")
    assert lifecycle.job_finish(job_id=job.pk, lease=lease, status=Status.FAILED, error_code=errors.BUILD_FAILED)
    assert not lifecycle.job_finish(job_id=job.pk, lease=lease, status=Status.SUCCESS)
    _, accepted = lifecycle.job_cancel(job_id=job.pk)
    job.refresh_from_db()
    assert not accepted and job.status == Status.FAILED
