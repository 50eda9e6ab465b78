"""Submitting a job, from the API (`POST /api/v1/jobs`) or the admin's rebuild: one flow for
both. Imported by the web process only: it loads DRF's serializers and the Dockerfile
generator, which the workers do not need."""

from builds.api.serializers import JobCreateInput
from builds.dockerfile import check_build_config
from builds.models import Job
from builds.services.jobs import job_create


def job_submit(*, request) -> tuple[Job, bool]:
    """A job request as sent, from the API or the admin's rebuild: validated (JobCreateInput's
    rules, then what the generator can already tell: runtime, version, commands) and stored.
    Returns (job, created). Raises rest_framework's ValidationError, errors.UserError (a
    setting that cannot be built) or jobs.JobConflict."""
    data = JobCreateInput(data=request)
    data.is_valid(raise_exception=True)
    check_build_config(data.validated_data.get("buildConfig") or {})
    return job_create(data=data.validated_data)
