"""The job table is the source of truth; the broker message only says "there is work"."""

import uuid

from django.db import models


class Status(models.TextChoices):
    PENDING = "pending"
    CLAIMED = "claimed"
    BUILDING = "building"
    SUCCESS = "success"
    FAILED = "failed"
    CANCELED = "canceled"


FINAL_STATUSES = (Status.SUCCESS, Status.FAILED, Status.CANCELED)
ACTIVE_STATUSES = (Status.CLAIMED, Status.BUILDING)

# buildConfig.priority, stored as a rank so "higher first" is an ORDER BY.
PRIORITIES = {"low": 0, "normal": 1, "high": 2}
PRIORITY_NAMES = {rank: name for name, rank in PRIORITIES.items()}


class Job(models.Model):
    id = models.CharField(primary_key=True, max_length=128)
    project_id = models.CharField(max_length=128, db_index=True)
    user_id = models.CharField(max_length=128, db_index=True)
    source_type = models.CharField(max_length=16, default="git")
    # gitRepository may hold credentials: it is used for the fetch and masked everywhere else.
    source_info = models.JSONField(default=dict)
    # As accepted, without the values of the env entries `secrets` names: those are in
    # secret_values, encrypted (builds.services.jobs), and removed by log retention.
    build_config = models.JSONField(default=dict)
    # db_default: a release without this column still inserts jobs while an upgrade runs.
    secret_values = models.TextField(blank=True, default="", db_default="", editable=False)
    # Hash of the accepted request: a client retry with the same body gets the same job back.
    request_fingerprint = models.CharField(max_length=64, editable=False)

    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING, db_index=True)
    # Each claim writes a fresh lease; every later write by that worker is conditional on it.
    lease = models.UUIDField(null=True, blank=True, editable=False)
    worker = models.CharField(max_length=255, blank=True, default="")
    attempts = models.PositiveIntegerField(default=0)
    retry_count = models.PositiveIntegerField(default=0)
    # A database default, so code that predates the column still inserts rows (rank "normal").
    priority = models.SmallIntegerField(db_default=PRIORITIES["normal"], choices=[(r, n) for n, r in PRIORITIES.items()])

    image_tag = models.CharField(max_length=512, blank=True, default="")
    image_digest = models.CharField(max_length=100, blank=True, default="")
    commit_sha = models.CharField(max_length=64, blank=True, default="")
    error_code = models.CharField(max_length=64, blank=True, default="")
    error = models.TextField(blank=True, default="")
    # The Dockerfile step a failed build stopped at, when buildctl named it (failure.step).
    failure_step = models.CharField(max_length=512, blank=True, default="", db_default="")
    # Where this job's outcome is posted instead of CALLBACK_URL (checked like a git URL).
    callback_url = models.CharField(max_length=2048, blank=True, default="", db_default="")
    progress = models.JSONField(null=True, blank=True)
    # What the last attempt learnt (builds.services.pipeline): {image, steps, phases}.
    report = models.JSONField(null=True, blank=True)
    # What the build went on despite (a lockfile out of date, a detection caveat): a list of
    # one-line strings, null for jobs that predate the column.
    warnings = models.JSONField(null=True, blank=True)

    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    updated_at = models.DateTimeField(auto_now=True)
    # When the job's queue message was (or is due to be) published; the reaper re-sends
    # messages of pending jobs that stay untaken well past this.
    enqueued_at = models.DateTimeField(null=True, blank=True)
    claimed_at = models.DateTimeField(null=True, blank=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    cancel_requested_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [
            models.Index(fields=["status", "heartbeat_at"]),
            models.Index(fields=["status", "enqueued_at"]),
            # The fair pick (builds.services.state.queue): a tenant's waiting jobs in order, and when a
            # tenant was last served.
            models.Index(fields=["status", "user_id", "project_id", "-priority", "created_at", "enqueued_at",
                                 "cancel_requested_at"], name="job_queue_order"),
            models.Index(fields=["user_id", "claimed_at"], name="job_user_served"),
            models.Index(fields=["project_id", "claimed_at"], name="job_project_served"),
        ]

    def __str__(self):
        return f"{self.id} ({self.status})"

    @property
    def is_final(self) -> bool:
        return self.status in FINAL_STATUSES

    @property
    def duration_seconds(self) -> float | None:
        if self.started_at and self.finished_at:
            return round((self.finished_at - self.started_at).total_seconds(), 3)
        return None


class LogChunk(models.Model):
    """A piece of a job's log at an absolute byte offset.

    Kept in the database so any web process on any host can serve any job's log while it is
    written. Chunks in the middle of an over-long log are deleted (head and tail are kept);
    readers show the gap as a marker.
    """

    job = models.ForeignKey(Job, on_delete=models.CASCADE, related_name="log_chunks")
    offset = models.BigIntegerField()
    data = models.BinaryField()

    class Meta:
        constraints = [models.UniqueConstraint(fields=["job", "offset"], name="logchunk_job_offset_unique")]
        ordering = ["job", "offset"]


class CallbackEvent(models.Model):
    """One outcome to report to the backend's webhook: an outbox row, written in the same
    transaction as the job's final status and delivered at least once."""

    class State(models.TextChoices):
        PENDING = "pending"
        DELIVERED = "delivered"
        GAVE_UP = "gave_up"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    job = models.ForeignKey(Job, on_delete=models.CASCADE, related_name="callback_events")
    url = models.CharField(max_length=2048)
    # The exact bytes sent on every attempt, so signatures and de-duplication are stable.
    body = models.TextField()
    state = models.CharField(max_length=16, choices=State.choices, default=State.PENDING, db_index=True)
    attempts = models.PositiveIntegerField(default=0)
    next_attempt_at = models.DateTimeField(db_index=True)
    locked_until = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    delivered_at = models.DateTimeField(null=True, blank=True)
    last_error = models.TextField(blank=True, default="")

    class Meta:
        ordering = ["-created_at"]

    def __str__(self):
        return f"callback {self.id} for {self.job_id} ({self.state})"


class CallbackAttempt(models.Model):
    event = models.ForeignKey(CallbackEvent, on_delete=models.CASCADE, related_name="attempt_log")
    at = models.DateTimeField(auto_now_add=True)
    http_status = models.PositiveIntegerField(null=True, blank=True)
    error = models.TextField(blank=True, default="")
    duration_ms = models.PositiveIntegerField(default=0)
    # Who asked for this attempt by hand (POST .../deliveries/redeliver or the admin); empty
    # for the outbox's own attempts.
    requested_by = models.CharField(max_length=128, blank=True, default="", db_default="")

    class Meta:
        ordering = ["at"]


class TenantLimit(models.Model):
    """How many builds one user or project may run at once, set in the admin; wins over
    configs/limits.json and MAX_BUILDS_PER_USER / MAX_BUILDS_PER_PROJECT."""

    class Kind(models.TextChoices):
        USER = "user"
        PROJECT = "project"

    kind = models.CharField(max_length=16, choices=Kind.choices)
    name = models.CharField(max_length=128, help_text="the userId or projectId")
    max_builds = models.PositiveIntegerField(help_text="builds at once; 0 means no limit")

    class Meta:
        constraints = [models.UniqueConstraint(fields=["kind", "name"], name="tenantlimit_kind_name_unique")]
        ordering = ["kind", "name"]

    def __str__(self):
        return f"{self.kind} {self.name}: {self.max_builds or 'no limit'}"


class ServiceCounter(models.Model):
    """Monotonic counters of things the service did (e.g. reaper actions), shared by every
    process through the database, for /metrics."""

    name = models.CharField(primary_key=True, max_length=100)
    value = models.BigIntegerField(default=0)

    def __str__(self):
        return f"{self.name}={self.value}"
