"""Reads of jobs asked for in more than one place: the job list's filters and order (the API's
lean paths and its DRF path), one page of it as the API shows it, the running jobs."""

from django.db.models import QuerySet

from builds import presentation
from builds.models import ACTIVE_STATUSES, PRIORITIES, Job, Status
from builds.services.state import queue


class FilterRefused(ValueError):
    """A filter value that names nothing (a status or priority that does not exist)."""


def job_filters(*, project_id: str | None = None, user_id: str | None = None, status: str | None = None,
                priority: str | None = None) -> dict[str, str | int]:
    """The list's filters as {column: value} (empty ones are no filter), or FilterRefused."""
    filters: dict[str, str | int] = {}
    if project_id:
        filters["project_id"] = project_id
    if user_id:
        filters["user_id"] = user_id
    if status:
        if status not in Status.values:
            raise FilterRefused(f"status must be one of {', '.join(Status.values)}")
        filters["status"] = status
    if priority:
        if priority not in PRIORITIES:
            raise FilterRefused(f"priority must be one of {', '.join(PRIORITIES)}")
        filters["priority"] = PRIORITIES[priority]
    return filters


# The list's order (builds.api.reads writes it as SQL from here).
LIST_ORDER = ("-created_at", "id")


def job_list(**filters: str | None) -> QuerySet:
    """Jobs, newest first, with the filters given (job_filters)."""
    return jobs_where(job_filters(**filters))


def jobs_where(columns: dict[str, str | int]) -> QuerySet:
    """Jobs, newest first, whose columns have these values."""
    return Job.objects.filter(**columns).order_by(*LIST_ORDER)


def job_page(query: QuerySet, *, limit: int, offset: int) -> dict:
    """One page of `query` as the API answers it; the queue is placed only if a job waits."""
    count = query.count()
    # Tuples, not Jobs: constructing 50 model instances cost about as much as the rest of a page.
    shown = presentation.SHOWN_FIELDS
    page = [presentation.JobRow(**dict(zip(shown, values)))
            for values in query.values_list(*shown)[offset : offset + limit]]
    places = queue.cached_places() if any(job.status == Status.PENDING for job in page) else {}
    return {"count": count, "limit": limit, "offset": offset, "results": [presentation.job_json(job, places) for job in page]}


def running_jobs() -> QuerySet:
    """Jobs claimed or building, on every worker, the longest-running first."""
    return Job.objects.filter(status__in=ACTIVE_STATUSES).order_by("claimed_at")
