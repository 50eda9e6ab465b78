"""HTTP endpoints (contract section 1). Thin: validate, call one service, present."""

from django.conf import settings
from django.http import HttpResponse, JsonResponse, StreamingHttpResponse
from rest_framework import status
from rest_framework.response import Response
from rest_framework.views import APIView

from builds.api.errors import ApiError
from builds.api.serializers import JobCreateInput
from builds.errors import UserError
from builds.models import ACTIVE_STATUSES, Job, Status
from builds.services import health, jobs, lifecycle, logs

MAX_PAGE = 200


def job_not_found():
    return ApiError(404, "JOB_NOT_FOUND", "job not found")


def get_job(job_id: str) -> Job:
    job = Job.objects.filter(pk=job_id).first()
    if job is None:
        raise job_not_found()
    return job


def _int_param(request, name: str, default: int, minimum: int, maximum: int | None = None) -> int:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return default
    if not raw.isdigit():
        raise ApiError(400, "VALIDATION_ERROR", f"{name} must be a whole number")
    value = int(raw)
    if value < minimum or (maximum is not None and value > maximum):
        raise ApiError(400, "VALIDATION_ERROR", f"{name} must be between {minimum} and {maximum}")
    return value


class JobListCreate(APIView):
    def post(self, request):
        if not isinstance(request.data, dict):
            raise ApiError(400, "VALIDATION_ERROR", "the request body must be a JSON object")
        data = JobCreateInput(data=request.data)
        data.is_valid(raise_exception=True)
        check_generation_settings(data.validated_data.get("buildConfig") or {})
        try:
            job, created = jobs.job_create(data=data.validated_data)
        except jobs.JobConflict:
            raise ApiError(409, "JOB_EXISTS", "a job with this id exists with a different request") from None
        return Response(jobs.job_json(job), status=status.HTTP_201_CREATED if created else status.HTTP_200_OK)

    def get(self, request):
        query = Job.objects.all().order_by("-created_at", "id")
        for param, field in (("projectId", "project_id"), ("userId", "user_id")):
            if value := request.query_params.get(param):
                query = query.filter(**{field: value})
        if value := request.query_params.get("status"):
            if value not in Status.values:
                raise ApiError(400, "VALIDATION_ERROR", f"status must be one of {', '.join(Status.values)}")
            query = query.filter(status=value)
        limit = _int_param(request, "limit", 50, 1, MAX_PAGE)
        offset = _int_param(request, "offset", 0, 0)
        count = query.count()
        results = [jobs.job_json(job) for job in query[offset : offset + limit]]
        return Response({"count": count, "limit": limit, "offset": offset, "results": results})


def check_generation_settings(build_config: dict) -> None:
    """Refuse at submit time what is already known to be unbuildable: an unknown runtime or
    version, or a command the allowlist refuses."""
    try:
        from builds.dockerfile import check_build_config
    except ImportError:
        return
    try:
        check_build_config(build_config)
    except UserError as exc:
        raise ApiError(400, exc.code, exc.message) from None


class JobDetail(APIView):
    def get(self, request, job_id):
        return Response(jobs.job_json(get_job(job_id)))


class JobCancel(APIView):
    def post(self, request, job_id):
        job, accepted = lifecycle.job_cancel(job_id=job_id)
        if job is None:
            raise job_not_found()
        if not accepted:
            raise ApiError(409, "JOB_FINAL", f"the job already ended ({job.status})")
        return Response(jobs.job_json(job), status=status.HTTP_202_ACCEPTED)


class JobLogs(APIView):
    def get(self, request, job_id):
        get_job(job_id)
        offset = _int_param(request, "offset", 0, 0)
        end = logs.log_end(job_id)
        if end == 0:
            raise ApiError(404, "BUILD_LOG_NOT_FOUND", "build log not found")
        start = min(offset, end)
        response = StreamingHttpResponse(logs.read_from(job_id, start, end), content_type="text/plain; charset=utf-8")
        response["X-Log-Offset"] = str(end)
        response["Cache-Control"] = "no-store"
        return response


class RunningBuilds(APIView):
    def get(self, request):
        running = Job.objects.filter(status__in=ACTIVE_STATUSES).order_by("claimed_at")
        return Response([jobs.job_json(job) for job in running])


def healthz(request):
    return HttpResponse("OK", content_type="text/plain; charset=utf-8")


def readyz(request):
    checks = health.checks()
    ok = all(value == "ok" for value in checks.values())
    return JsonResponse({"status": "ok" if ok else "unavailable", **checks}, status=200 if ok else 503)
