"""HTTP endpoints (README, "API"; the OpenAPI schema at /api/schema/). Thin: validate, call one service, present."""

import hashlib
import uuid

from django.http import HttpResponse, JsonResponse
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import status
from rest_framework.response import Response
from rest_framework.views import APIView

from builds import selectors
from builds.api.errors import ApiError
from builds.api.serializers import JobCreateInput
from builds.api.schema import (
    DeliveriesOutput, ErrorOutput, JobListOutput, JobOutput, RedeliverInput, RedeliveryOutput, ValidationErrorOutput,
)
from builds.errors import UserError
from builds.models import PRIORITIES, CallbackEvent, Job, Status
from builds.services import callbacks, jobs, submit
from builds.services.operations import health, metrics
from builds.services.state import lifecycle

MAX_PAGE = 200

UNAUTHORIZED = OpenApiResponse(ErrorOutput, description="missing or wrong token")
NOT_FOUND = OpenApiResponse(ErrorOutput, description="JOB_NOT_FOUND")
JOB_ID = OpenApiParameter("job_id", str, OpenApiParameter.PATH, description="the job's id")


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
    @extend_schema(
        operation_id="jobs_create",
        summary="Submit a build job",
        request=JobCreateInput,
        responses={
            201: OpenApiResponse(JobOutput, description="the job was created"),
            200: OpenApiResponse(JobOutput, description="the same request was sent before: the existing job"),
            400: OpenApiResponse(ValidationErrorOutput, description="the request is not valid"),
            401: UNAUTHORIZED,
            409: OpenApiResponse(ErrorOutput, description="JOB_EXISTS: the id is taken by a different request"),
            413: OpenApiResponse(ErrorOutput, description="PAYLOAD_TOO_LARGE: the body is over 1 MiB"),
        },
        tags=["jobs"],
    )
    def post(self, request):
        if not isinstance(request.data, dict):
            raise ApiError(400, "VALIDATION_ERROR", "the request body must be a JSON object")
        try:
            job, created = submit.job_submit(request=request.data)
        except UserError as exc:  # known unbuildable at submit: an unknown runtime, a refused command
            raise ApiError(400, exc.code, exc.message) from None
        except jobs.JobConflict:
            raise ApiError(409, "JOB_EXISTS", "a job with this id exists with a different request") from None
        return Response(JobOutput(job, context={"placed": not created}).data,
                        status=status.HTTP_201_CREATED if created else status.HTTP_200_OK)

    @extend_schema(
        operation_id="jobs_list",
        summary="List jobs, newest first",
        parameters=[
            OpenApiParameter("projectId", str, description="only this project's jobs"),
            OpenApiParameter("userId", str, description="only this user's jobs"),
            OpenApiParameter("status", str, enum=Status.values, description="only jobs in this status"),
            OpenApiParameter("priority", str, enum=list(PRIORITIES), description="only jobs of this priority"),
            OpenApiParameter("limit", int, description=f"page size, 1-{MAX_PAGE} (default 50)"),
            OpenApiParameter("offset", int, description="how many jobs to skip"),
        ],
        responses={200: JobListOutput, 400: OpenApiResponse(ErrorOutput, description="a filter is not valid"),
                   401: UNAUTHORIZED},
        tags=["jobs"],
    )
    def get(self, request):
        params = request.query_params
        try:
            query = selectors.job_list(project_id=params.get("projectId"), user_id=params.get("userId"),
                                       status=params.get("status"), priority=params.get("priority"))
        except selectors.FilterRefused as exc:
            raise ApiError(400, "VALIDATION_ERROR", str(exc)) from None
        limit = _int_param(request, "limit", 50, 1, MAX_PAGE)
        offset = _int_param(request, "offset", 0, 0)
        return Response(selectors.job_page(query, limit=limit, offset=offset))


class JobDetail(APIView):
    @extend_schema(operation_id="jobs_retrieve", summary="One job", parameters=[JOB_ID],
                   responses={200: JobOutput, 401: UNAUTHORIZED, 404: NOT_FOUND}, tags=["jobs"])
    def get(self, request, job_id):
        return Response(JobOutput(get_job(job_id)).data)


class JobCancel(APIView):
    @extend_schema(
        operation_id="jobs_cancel",
        summary="Cancel a job",
        description="A pending job is canceled at once; a running build is stopped within a few seconds.",
        parameters=[JOB_ID],
        request=None,
        responses={
            202: OpenApiResponse(JobOutput, description="the cancel was accepted"),
            401: UNAUTHORIZED,
            404: NOT_FOUND,
            409: OpenApiResponse(ErrorOutput, description="JOB_FINAL: the job already ended"),
        },
        tags=["jobs"],
    )
    def post(self, request, job_id):
        job, accepted = lifecycle.job_cancel(job_id=job_id)
        if job is None:
            raise job_not_found()
        if not accepted:
            raise ApiError(409, "JOB_FINAL", f"the job already ended ({job.status})")
        return Response(JobOutput(job).data, status=status.HTTP_202_ACCEPTED)


class JobDeliveries(APIView):
    @extend_schema(
        operation_id="jobs_deliveries_list",
        summary="The job's webhook deliveries: each event and every attempt at it",
        parameters=[JOB_ID],
        responses={200: DeliveriesOutput, 401: UNAUTHORIZED, 404: NOT_FOUND},
        tags=["webhooks"],
    )
    def get(self, request, job_id):
        job = get_job(job_id)
        return Response({"jobId": job.id, "results": callbacks.deliveries_json(job)})


def requester(request) -> str:
    """Who asked, for the audit record: the API token by a short hash (never the token)."""
    token = request.auth if isinstance(request.auth, str) else ""
    return f"api token {hashlib.sha256(token.encode()).hexdigest()[:8]}" if token else "api"


class JobRedeliver(APIView):
    @extend_schema(
        operation_id="jobs_deliveries_redeliver",
        summary="Send the job's webhook event once more",
        description=(
            "One new attempt at the event (the job's latest, or `eventId`), with the same event id and "
            "body, signed afresh, made before the response is sent; whatever the event's state. The "
            "attempt records who asked (`requestedBy`). A success marks a waiting or given-up event "
            "delivered; a failure leaves the outbox's own retries as they were."
        ),
        parameters=[JOB_ID],
        request=RedeliverInput,
        responses={
            200: OpenApiResponse(RedeliveryOutput, description="the attempt was made (see its httpStatus/error)"),
            400: OpenApiResponse(ErrorOutput, description="eventId is not valid"),
            401: UNAUTHORIZED,
            404: OpenApiResponse(ErrorOutput, description="JOB_NOT_FOUND, or CALLBACK_EVENT_NOT_FOUND: the job "
                                 "has no webhook event (it has not ended, or no callback URL was set)"),
            409: OpenApiResponse(ErrorOutput, description="DELIVERY_IN_PROGRESS: an attempt is being made now"),
        },
        tags=["webhooks"],
    )
    def post(self, request, job_id):
        job = get_job(job_id)
        events = CallbackEvent.objects.filter(job=job)
        body = request.data if isinstance(request.data, dict) else {}
        if request.data and not isinstance(request.data, dict):
            raise ApiError(400, "VALIDATION_ERROR", "the request body must be a JSON object")
        if (event_id := body.get("eventId")) is not None:
            try:
                events = events.filter(pk=uuid.UUID(event_id if isinstance(event_id, str) else ""))
            except ValueError:
                raise ApiError(400, "VALIDATION_ERROR", "eventId must be a UUID") from None
        event = events.order_by("-created_at", "-pk").first()
        if event is None:
            raise ApiError(404, "CALLBACK_EVENT_NOT_FOUND", "the job has no webhook event to deliver")
        try:
            attempt = callbacks.redeliver(event.pk, requested_by=requester(request))
        except callbacks.DeliveryBusy:
            raise ApiError(409, "DELIVERY_IN_PROGRESS", "an attempt at this event is being made now") from None
        state = CallbackEvent.objects.filter(pk=event.pk).values_list("state", flat=True).get()
        return Response({"eventId": str(event.pk), "state": state, "attempt": callbacks.attempt_json(attempt)})


class RunningBuilds(APIView):
    @extend_schema(operation_id="running_builds", summary="Jobs claimed or building, on every worker",
                   responses={200: JobOutput(many=True), 401: UNAUTHORIZED}, tags=["dev"])
    def get(self, request):
        return Response(JobOutput(selectors.running_jobs(), many=True).data)


def healthz(request):
    return HttpResponse("OK", content_type="text/plain; charset=utf-8")


def metrics_view(request):
    """Prometheus text; no token, like /healthz: it holds counts only, no ids or names. Computed
    in the background, not per request (builds.services.operations.metrics)."""
    latest = metrics.latest()
    if latest is None:
        return HttpResponse("metrics are not available\n", status=503, content_type="text/plain; charset=utf-8")
    body, content_type = latest
    return HttpResponse(body, content_type=content_type)


def readyz(request):
    """No token: the last results of the checks, refreshed in the background (builds.services.operations.health)."""
    checks = health.readiness() or {"checks": "not available yet"}
    ok = all(value == "ok" for value in checks.values())
    return JsonResponse({"status": "ok" if ok else "unavailable", **checks}, status=200 if ok else 503)
