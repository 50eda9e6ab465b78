"""The OpenAPI description of the API: output serializers that document a job as
`builds/presentation.py` writes it (the API's Job, the webhook's JobOutcome: the same fields,
CALLBACK_FIELDS of them) and the error bodies, the bearer-token scheme, the outcome webhook, and
the endpoints that are plain Django views (the log stream, health, metrics), which
drf-spectacular cannot see by itself.

JobOutput and JobOutcomeOutput render through builds/presentation.py (job_json, outcome_json),
so the class the schema is made from is the one that renders; builds/api/reads.py's lean reads
and the worker's webhook call the same functions without DRF. The fields they declare are
checked against what those functions write (tests/test_openapi.py), as are real responses.
"""

import copy

from drf_spectacular.extensions import OpenApiAuthenticationExtension
from drf_spectacular.utils import OpenApiResponse, OpenApiWebhook, extend_schema, extend_schema_serializer
from rest_framework import serializers

from builds import presentation
from builds.errors import FAILURE_TYPES
from builds.models import PRIORITIES, Status

SECURITY_SCHEME = "bearerAuth"


class BearerTokenScheme(OpenApiAuthenticationExtension):
    target_class = "builds.api.auth.BearerTokenAuthentication"
    name = SECURITY_SCHEME

    def get_security_definition(self, auto_schema):
        return {"type": "http", "scheme": "bearer", "description": "a token from BUILDER_API_TOKENS"}


@extend_schema_serializer(component_name="Error")
class ErrorOutput(serializers.Serializer):
    error = serializers.CharField(help_text="stable error code, e.g. JOB_NOT_FOUND")
    message = serializers.CharField(help_text="one line for humans")


@extend_schema_serializer(component_name="ValidationError")
class ValidationErrorOutput(ErrorOutput):
    fields = serializers.DictField(required=False, help_text="the messages per input field")


@extend_schema_serializer(component_name="Progress")
class ProgressOutput(serializers.Serializer):
    step = serializers.IntegerField(allow_null=True, help_text="the running step's number, from buildctl's [n/m]")
    total = serializers.IntegerField(allow_null=True, help_text="the number of steps")
    name = serializers.CharField(help_text='the step, e.g. "RUN npm run build"')


@extend_schema_serializer(component_name="SourceInfo")
class SourceInfoOutput(serializers.Serializer):
    gitRepository = serializers.CharField(help_text="credentials in the URL are shown as ***")
    commitSha = serializers.CharField(required=False)
    ref = serializers.CharField(required=False)
    workingDir = serializers.CharField(required=False)


@extend_schema_serializer(component_name="ResourceLimits")
class ResourceLimitsOutput(serializers.Serializer):
    cpu = serializers.FloatField(required=False, allow_null=True)
    memoryMB = serializers.IntegerField(required=False, allow_null=True)


@extend_schema_serializer(component_name="BuildConfig")
class BuildConfigOutput(serializers.Serializer):
    isAutoBuild = serializers.BooleanField(required=False)
    runtime = serializers.CharField(required=False)
    version = serializers.CharField(required=False)
    prebuildCommand = serializers.CharField(required=False)
    installCommand = serializers.CharField(required=False)
    buildCommand = serializers.CharField(required=False)
    runCommand = serializers.CharField(required=False)
    exposePort = serializers.IntegerField(required=False)
    timeoutSeconds = serializers.IntegerField(required=False)
    resourceLimits = ResourceLimitsOutput(required=False)
    env = serializers.DictField(child=serializers.CharField(), required=False,
                                help_text="values of keys listed in secrets are shown as ***")
    secrets = serializers.ListField(child=serializers.CharField(), required=False)
    dockerfilePath = serializers.CharField(required=False)
    buildContextDir = serializers.CharField(required=False)
    network = serializers.ChoiceField(choices=["bridge", "none"], required=False,
                                      help_text="none: RUN steps get no network and ADD <url> is refused")
    strictLockfile = serializers.BooleanField(required=False, help_text="true: a lockfile out of date with its "
                                              "manifest fails the build instead of a warning")
    priority = serializers.ChoiceField(choices=list(PRIORITIES), required=False,
                                       help_text="the order of a tenant's waiting jobs (default normal)")
    supersede = serializers.JSONField(required=False, help_text='true or "running": cancels older jobs of the '
                                      "same projectId + ref + workingDir (pending, or also the running one)")
    attestations = serializers.BooleanField(required=False, help_text="false: no provenance or SBOM attestations")


@extend_schema_serializer(component_name="QueuePlace")
class QueuePlaceOutput(serializers.Serializer):
    position = serializers.IntegerField(allow_null=True, help_text="1: the next job to start (an estimate)")
    ahead = serializers.IntegerField(allow_null=True, help_text="pending jobs that start before this one")
    reason = serializers.CharField(help_text='why it waits: "slots busy", "user limit 2 reached", '
                                   '"project limit 1 reached", "waiting for retry at <time>"')


@extend_schema_serializer(component_name="Failure")
class FailureOutput(serializers.Serializer):
    type = serializers.ChoiceField(
        choices=list(FAILURE_TYPES),
        help_text="source: fetching the repository; dockerfile: the Dockerfile or the build settings; build_step: a "
        "step of the build failed (e.g. a RUN command exited non-zero); base_image: an image the build needs does "
        "not exist; timeout: the job ran out of time; canceled: canceled by request or superseded; "
        "infrastructure: the builder or a service it needs failed (retries used up)",
    )
    step = serializers.CharField(allow_null=True, help_text='the Dockerfile step that failed, e.g. "RUN npm test", '
                                 "when buildctl named it")
    retryable = serializers.BooleanField(help_text="submitting the same job again may succeed with nothing changed")


@extend_schema_serializer(component_name="Image")
class ImageOutput(serializers.Serializer):
    sizeBytes = serializers.IntegerField(allow_null=True, help_text="the layers' compressed bytes in the registry")
    layers = serializers.IntegerField(allow_null=True)
    platform = serializers.CharField(allow_null=True, help_text='e.g. "linux/amd64"')


@extend_schema_serializer(component_name="Step")
class StepOutput(serializers.Serializer):
    index = serializers.IntegerField(help_text="1 for the first Dockerfile instruction buildctl began")
    name = serializers.CharField(help_text='as buildctl names it, e.g. "[2/3] RUN make"')
    startedAt = serializers.DateTimeField()
    seconds = serializers.FloatField(allow_null=True, help_text="null when the step did not finish")
    cached = serializers.BooleanField(help_text="the build cache answered it")


@extend_schema_serializer(component_name="Cache")
class CacheOutput(serializers.Serializer):
    steps = serializers.IntegerField(help_text="Dockerfile steps of the build")
    cached = serializers.IntegerField(help_text="of which the build cache answered")


@extend_schema_serializer(component_name="Job")
class JobOutput(serializers.Serializer):
    """A job as the API shows it, rendered by presentation.job_json; the fields document what it
    writes. Context: `places` (the queue's places; default: computed) and `placed` (False for a
    job just created: its reason to wait, no position)."""

    id = serializers.CharField()
    projectId = serializers.CharField()
    userId = serializers.CharField()
    sourceType = serializers.CharField()
    sourceInfo = SourceInfoOutput()
    buildConfig = BuildConfigOutput()
    status = serializers.ChoiceField(choices=Status.values)
    imageTag = serializers.CharField(allow_null=True)
    imageDigest = serializers.CharField(allow_null=True)
    commitSha = serializers.CharField(allow_null=True, help_text="the commit actually built")
    retryCount = serializers.IntegerField()
    errorCode = serializers.CharField(allow_null=True)
    error = serializers.CharField(allow_null=True)
    failure = FailureOutput(allow_null=True, help_text="why a failed or canceled job ended so (null otherwise)")
    warnings = serializers.ListField(child=serializers.CharField(),
                                     help_text="what the build went on despite (e.g. a lockfile out of date)")
    logPath = serializers.CharField(help_text="the API path of the job's log")
    callbackUrl = serializers.CharField(allow_null=True, help_text="where the outcome is posted instead of "
                                        "CALLBACK_URL, when the request named one")
    progress = ProgressOutput(
        allow_null=True,
        help_text="the build step running now (null before the build starts and once it ended), "
        "for a progress bar",
    )
    createdAt = serializers.DateTimeField()
    updatedAt = serializers.DateTimeField()
    startedAt = serializers.DateTimeField(allow_null=True)
    finishedAt = serializers.DateTimeField(allow_null=True)
    durationSeconds = serializers.FloatField(allow_null=True)
    worker = serializers.CharField(allow_null=True, help_text="the worker process that took the job")
    priority = serializers.ChoiceField(choices=list(PRIORITIES), help_text="buildConfig.priority, normal by default")
    queue = QueuePlaceOutput(allow_null=True, help_text="where a pending job stands (null once it started)")
    image = ImageOutput(allow_null=True, help_text="the image pushed (null until it was)")
    steps = StepOutput(many=True, allow_null=True, help_text="the Dockerfile's steps as the build ran them")
    cache = CacheOutput(allow_null=True)
    queuedSeconds = serializers.FloatField(allow_null=True, help_text="from creation to the first start")
    fetchSeconds = serializers.FloatField(allow_null=True, help_text="fetching the source and preparing the build")
    buildSeconds = serializers.FloatField(allow_null=True, help_text="buildctl, without exporting the image")
    pushSeconds = serializers.FloatField(allow_null=True, help_text="exporting and pushing the image, and the tag")

    def to_representation(self, instance):
        return presentation.job_json(instance, self.context.get("places"), placed=self.context.get("placed", True))


# The webhook's body: the same fields as Job's, CALLBACK_FIELDS of them, rendered by
# presentation.outcome_json.
JobOutcomeOutput = extend_schema_serializer(component_name="JobOutcome")(type(
    "JobOutcomeOutput", (serializers.Serializer,),
    {**{name: copy.deepcopy(JobOutput._declared_fields[name]) for name in presentation.CALLBACK_FIELDS},
     "to_representation": lambda self, instance: presentation.outcome_json(instance)},
))

job_outcome_webhook = OpenApiWebhook(
    name="jobOutcome",
    decorator=extend_schema(
        summary="A job ended",
        description="POSTed to the job's callbackUrl, else CALLBACK_URL, once a job is success, failed or "
        "canceled; retried with backoff until a 2xx answer (redirects are not followed). Headers: "
        "X-Hubfly-Event-Id (the same on every attempt: de-duplicate on it) and, with CALLBACK_SECRET, "
        "X-Hubfly-Timestamp and X-Hubfly-Signature: v1=<hex HMAC-SHA256(secret, "
        "\"<timestamp>.<eventId>.<raw body>\")>.",
        request=JobOutcomeOutput,
        responses={200: OpenApiResponse(description="received; any 2xx ends the retries")},
        tags=["webhooks"],
    ),
)


@extend_schema_serializer(component_name="JobList")
class JobListOutput(serializers.Serializer):
    count = serializers.IntegerField()
    limit = serializers.IntegerField()
    offset = serializers.IntegerField()
    results = JobOutput(many=True)


@extend_schema_serializer(component_name="DeliveryAttempt")
class DeliveryAttemptOutput(serializers.Serializer):
    at = serializers.DateTimeField(help_text="when the attempt was made")
    httpStatus = serializers.IntegerField(allow_null=True, help_text="the receiver's answer; null when none came")
    error = serializers.CharField(allow_null=True, help_text="why the attempt failed (null: delivered)")
    durationMs = serializers.IntegerField(help_text="how long the attempt took")
    requestedBy = serializers.CharField(allow_null=True, help_text="who asked for it by hand (a redelivery); null "
                                        "for the outbox's own attempts")


@extend_schema_serializer(component_name="DeliveryEvent")
class DeliveryEventOutput(serializers.Serializer):
    eventId = serializers.UUIDField(help_text="sent as X-Hubfly-Event-Id with every attempt")
    url = serializers.CharField()
    state = serializers.ChoiceField(choices=["pending", "delivered", "gave_up"])
    createdAt = serializers.DateTimeField()
    deliveredAt = serializers.DateTimeField(allow_null=True)
    nextAttemptAt = serializers.DateTimeField(allow_null=True, help_text="the outbox's next try, while pending")
    attempts = DeliveryAttemptOutput(many=True)


@extend_schema_serializer(component_name="Deliveries")
class DeliveriesOutput(serializers.Serializer):
    jobId = serializers.CharField()
    results = DeliveryEventOutput(many=True, help_text="the job's webhook events, oldest first")


@extend_schema_serializer(component_name="RedeliverRequest")
class RedeliverInput(serializers.Serializer):
    eventId = serializers.UUIDField(required=False, help_text="the event to send again (default: the job's latest)")


@extend_schema_serializer(component_name="Redelivery")
class RedeliveryOutput(serializers.Serializer):
    eventId = serializers.UUIDField()
    state = serializers.ChoiceField(choices=["pending", "delivered", "gave_up"], help_text="the event's state now")
    attempt = DeliveryAttemptOutput(help_text="the attempt just made")


def _error(description: str, schema: str = "Error") -> dict:
    return {"description": description, "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{schema}"}}}}


def _logs_operation() -> dict:
    text = {"schema": {"type": "string"}}
    return {
        "operationId": "jobs_logs_retrieve",
        "summary": "The job's log: by byte offset, followed live, or as Server-Sent Events",
        "description": (
            "Without `follow`: the bytes from `offset` to the end of the log at the time of the request, "
            "with `X-Log-Offset` = the next offset to ask for.\n\n"
            "`follow=true`: the bytes from `offset` as the build writes them, until the job is final.\n\n"
            "`Accept: text/event-stream`: the same as Server-Sent Events. Each event's data is one or more "
            "whole log lines (split on newlines) and its `id` is the byte offset after them; reconnect "
            "with `Last-Event-ID` to resume with the next byte. The last event is `event: end` whose "
            'data is `{"status": ..., "offset": ...}`. Comment lines keep an idle stream open.'
        ),
        "tags": ["jobs"],
        "security": [{SECURITY_SCHEME: []}],
        "parameters": [
            {"name": "job_id", "in": "path", "required": True, "schema": {"type": "string"}, "description": "the job's id"},
            {"name": "offset", "in": "query", "schema": {"type": "integer", "minimum": 0, "default": 0},
             "description": "the byte offset to start at"},
            {"name": "follow", "in": "query", "schema": {"type": "boolean", "default": False},
             "description": "keep the response open and stream new bytes until the job is final"},
            {"name": "Last-Event-ID", "in": "header", "schema": {"type": "integer", "minimum": 0},
             "description": "with text/event-stream: resume after this byte offset (wins over offset)"},
        ],
        "responses": {
            "200": {
                "description": "the log",
                "headers": {
                    "X-Log-Offset": {"schema": {"type": "integer"},
                                     "description": "without follow: the offset after the returned bytes"},
                    "X-Log-Start": {"schema": {"type": "integer"},
                                    "description": "with follow or events: the offset the stream starts at"},
                },
                "content": {"text/plain": text, "text/event-stream": text},
            },
            "400": _error("a parameter is not valid"),
            "401": _error("missing or wrong token"),
            "404": _error("JOB_NOT_FOUND, or BUILD_LOG_NOT_FOUND when the job has no log"),
            "429": _error("TOO_MANY_FOLLOWERS: this web process follows MAX_LOG_FOLLOWERS logs already (Retry-After)"),
        },
    }


def add_plain_django_endpoints(result, generator, request, public):
    """drf-spectacular postprocessing hook: documents the plain Django views."""
    paths = result.setdefault("paths", {})
    paths["/api/v1/jobs/{job_id}/logs"] = {"get": _logs_operation()}
    paths["/healthz"] = {"get": {
        "operationId": "healthz", "summary": "Liveness", "tags": ["health"], "security": [],
        "responses": {"200": {"description": "OK", "content": {"text/plain": {"schema": {"type": "string"}}}}},
    }}
    readiness = {"type": "object", "properties": {"status": {"type": "string", "enum": ["ok", "unavailable"]}},
                 "required": ["status"], "additionalProperties": {"type": "string"}}
    paths["/readyz"] = {"get": {
        "operationId": "readyz", "summary": "Readiness: database, broker, buildkitd, build network and registry",
        "tags": ["health"], "security": [],
        "responses": {
            "200": {"description": "every check is ok", "content": {"application/json": {"schema": readiness}}},
            "503": {"description": "a check failed", "content": {"application/json": {"schema": readiness}}},
        },
    }}
    paths["/metrics"] = {"get": {
        "operationId": "metrics", "summary": "Prometheus metrics (text exposition format); no token needed",
        "tags": ["health"], "security": [],
        "responses": {"200": {"description": "the metrics", "content": {"text/plain": {"schema": {"type": "string"}}}}},
    }}
    result["paths"] = dict(sorted(paths.items()))
    return result
