"""Reads of jobs asked for in more than one place: the job list (the API's lean path and its
DRF path), one page of it as the API shows it, the running jobs."""

from django.db.models import QuerySet

from builds import presentation
from builds.models import ACTIVE_STATUSES, PRIORITIES, Job, Status
from builds.services.state import queue


class FilterRefused(ValueError):
    """A filter value that names nothing (a status or priority that does not exist)."""


def job_list(*, project_id: str | None = None, user_id: str | None = None, status: str | None = None,
             priority: str | None = None) -> QuerySet:
    """Jobs, newest first, with the filters given (empty ones are no filter)."""
    query = Job.objects.all().order_by("-created_at", "id")
    if project_id:
        query = query.filter(project_id=project_id)
    if user_id:
        query = query.filter(user_id=user_id)
    if status:
        if status not in Status.values:
            raise FilterRefused(f"status must be one of {', '.join(Status.values)}")
        query = query.filter(status=status)
    if priority:
        if priority not in PRIORITIES:
            raise FilterRefused(f"priority must be one of {', '.join(PRIORITIES)}")
        query = query.filter(priority=PRIORITIES[priority])
    return query


def job_page(query: QuerySet, *, limit: int, offset: int) -> dict:
    """One page of `query` as the API answers it; the queue is placed only if a job waits."""
    count = query.count()
    page = list(query[offset : offset + limit])
    places = queue.cached_places() if any(job.status == Status.PENDING for job in page) else {}
    return {"count": count, "limit": limit, "offset": offset, "results": [presentation.job_json(job, places) for job in page]}


def running_jobs() -> QuerySet:
    """Jobs claimed or building, on every worker, the longest-running first."""
    return Job.objects.filter(status__in=ACTIVE_STATUSES).order_by("claimed_at")
