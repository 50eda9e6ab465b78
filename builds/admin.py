"""Django admin for jobs: browse, filter and search; read a job's settings (secrets masked),
result, callback deliveries and log, followed live while it runs; cancel and rebuild.

Nobody edits a job by hand: every change goes through the same services as the API
(`lifecycle.job_cancel`, `submit.job_submit`). Who may do what:
- `builds.view_job` (e.g. a read-only group): browse jobs, read and download logs;
- `builds.change_job`: also cancel and rebuild. It never makes fields editable.
"""

import json

from django.contrib import admin, messages
from django.contrib.admin.utils import quote, unquote
from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpResponseNotAllowed, HttpResponseRedirect, JsonResponse
from django.urls import path, reverse
from django.utils.dateparse import parse_datetime
from django.utils.html import format_html, format_html_join

from rest_framework.exceptions import ValidationError

from builds import errors, presentation
from builds.api import logstream
from builds.api.errors import first_message
from builds.errors import UserError
from builds.joblog import reader, writer
from builds.models import FINAL_STATUSES, CallbackAttempt, CallbackEvent, Job, TenantLimit
from builds.services import callbacks, jobs, rebuild, submit
from builds.services.state import lifecycle, queue

LOG_TAIL_BYTES = 64 * 1024


class RuntimeFilter(admin.SimpleListFilter):
    title = "runtime"
    parameter_name = "runtime"

    def lookups(self, request, model_admin):
        runtimes = {(config or {}).get("runtime") or "" for config in Job.objects.values_list("build_config", flat=True)[:5000]}
        return [(r, r) for r in sorted(runtimes) if r] + [("-", "none (Dockerfile)")]

    def queryset(self, request, queryset):
        if self.value() == "-":
            return queryset.exclude(build_config__has_key="runtime") | queryset.filter(build_config__runtime="")
        if self.value():
            return queryset.filter(build_config__runtime=self.value())
        return queryset


class ErrorCodeFilter(admin.SimpleListFilter):
    title = "error code"
    parameter_name = "error_code"

    def lookups(self, request, model_admin):
        codes = Job.objects.exclude(error_code="").order_by("error_code").values_list("error_code", flat=True).distinct()
        return [(code, code) for code in codes]

    def queryset(self, request, queryset):
        return queryset.filter(error_code=self.value()) if self.value() else queryset


def _progress_text(progress: dict | None) -> str:
    if not progress:
        return "-"
    if progress.get("step") and progress.get("total"):
        return f"step {progress['step']}/{progress['total']}: {progress.get('name', '')}"
    return progress.get("name") or "-"


def _pretty(value) -> str:
    return format_html("<pre style='margin:0;white-space:pre-wrap'>{}</pre>", json.dumps(value, indent=2, sort_keys=True))


@admin.register(Job)
class JobAdmin(admin.ModelAdmin):
    list_display = ("id", "status", "project_id", "user_id", "priority", "runtime", "duration", "retry_count",
                    "created_at")
    list_filter = ("status", "priority", RuntimeFilter, ErrorCodeFilter, "created_at")
    search_fields = ("id", "project_id", "user_id", "commit_sha", "image_tag", "image_digest", "worker")
    date_hierarchy = "created_at"
    list_per_page = 50
    actions = ["cancel_jobs", "rebuild_jobs"]
    fieldsets = (
        (None, {"fields": ("id", "status", "queue_place", "progress_text", "project_id", "user_id", "priority", "worker",
                           "attempts", "retry_count")}),
        ("Result", {"fields": ("commit_sha", "image_tag", "image_digest", "error_code", "error", "failure")}),
        ("Build steps", {"fields": ("steps_timeline", "image_summary")}),
        ("Source and settings (secrets masked)", {"fields": ("source", "settings")}),
        ("Times", {"fields": ("created_at", "started_at", "finished_at", "duration", "heartbeat_at",
                              "cancel_requested_at")}),
        ("Callback deliveries", {"fields": ("callback_url", "callback_deliveries")}),
    )
    readonly_fields = (
        "id", "status", "queue_place", "progress_text", "project_id", "user_id", "priority", "worker", "attempts",
        "retry_count", "commit_sha",
        "image_tag", "image_digest", "error_code", "error", "source", "settings", "created_at", "started_at",
        "finished_at", "duration", "heartbeat_at", "cancel_requested_at", "callback_deliveries", "failure",
        "callback_url", "steps_timeline", "image_summary",
    )

    # --- who may do what -------------------------------------------------------------------

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False

    def has_operate_permission(self, request) -> bool:
        """Cancel and rebuild."""
        return request.user.has_perm("builds.change_job")

    # --- columns and fields ----------------------------------------------------------------

    @admin.display(description="runtime")
    def runtime(self, job):
        return (job.build_config or {}).get("runtime") or ""

    @admin.display(description="duration (s)")
    def duration(self, job):
        return "-" if job.duration_seconds is None else job.duration_seconds

    @admin.display(description="queue")
    def queue_place(self, job):
        if job.status != "pending":
            return "-"
        place = queue.places(job.id).get(job.id)
        if not place:
            return "cancel requested"
        return f"position {place['position']} ({place['ahead']} ahead): {place['reason']}"

    @admin.display(description="progress")
    def progress_text(self, job):
        return _progress_text(job.progress)

    @admin.display(description="source")
    def source(self, job):
        return _pretty(presentation.masked_source_info(job))

    @admin.display(description="build settings")
    def settings(self, job):
        return _pretty(presentation.masked_build_config(job))

    @admin.display(description="failure")
    def failure(self, job):
        failure = errors.failure(status=job.status, code=job.error_code, step=job.failure_step)
        if failure is None:
            return "-"
        step = f", at {failure['step']}" if failure["step"] else ""
        return f"{failure['type']}{step} ({'retryable' if failure['retryable'] else 'not retryable'})"

    @admin.display(description="timeline")
    def steps_timeline(self, job):
        """The Dockerfile's steps on one time axis: a bar from each step's start, as long as it took."""
        steps = (job.report or {}).get("steps") or []
        if not steps:
            return "-"
        starts = [parse_datetime(step["startedAt"]) for step in steps]
        origin = min(starts)
        ends = [(start - origin).total_seconds() + (step["seconds"] or 0) for start, step in zip(starts, steps)]
        span = max(max(ends), 0.001)
        rows = []
        for start, step in zip(starts, steps):
            offset = (start - origin).total_seconds()
            seconds = step["seconds"]
            rows.append((
                step["index"], step["name"], "cached" if step["cached"] else ("-" if seconds is None else f"{seconds:.1f} s"),
                f"{100 * offset / span:.1f}", f"{max(100 * (seconds or 0) / span, 0.5):.1f}",
                "#9cc" if step["cached"] else "#47a",
            ))
        return format_html(
            "<table style='width:100%'><thead><tr><th>#</th><th>step</th><th>time</th><th style='width:40%'>"
            "0 to {} s</th></tr></thead><tbody>{}</tbody></table>",
            f"{span:.1f}",
            format_html_join("", "<tr><td>{}</td><td>{}</td><td>{}</td><td><div style='margin-left:{}%;width:{}%;"
                             "height:10px;background:{}'></div></td></tr>", rows),
        )

    @admin.display(description="image")
    def image_summary(self, job):
        report = job.report or {}
        image, cache, phases = report.get("image") or {}, report.get("cache") or {}, report.get("phases") or {}
        if not (image or cache or phases):
            return "-"
        return _pretty({"image": image, "cache": cache, "phaseSeconds": phases})

    @admin.display(description="deliveries")
    def callback_deliveries(self, job):
        events = list(job.callback_events.order_by("created_at"))
        if not events:
            return "none"
        attempts = CallbackAttempt.objects.filter(event__in=events).order_by("at")
        by_event: dict = {}
        for attempt in attempts:
            by_event.setdefault(attempt.event_id, []).append(attempt)
        rows = []
        for event in events:
            tries = by_event.get(event.id, [])
            detail = "; ".join(
                f"{a.at:%Y-%m-%d %H:%M:%S} {a.http_status or '-'} {a.error or 'ok'} ({a.duration_ms} ms)"
                + (f" redelivered by {a.requested_by}" if a.requested_by else "") for a in tries
            )
            rows.append((event.id, event.state, event.attempts, event.url, detail or "not tried yet"))
        return format_html(
            "<table><thead><tr><th>event</th><th>state</th><th>attempts</th><th>url</th><th>tries</th></tr></thead>"
            "<tbody>{}</tbody></table>",
            format_html_join("", "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>", rows),
        )

    # --- the job page ----------------------------------------------------------------------

    def change_view(self, request, object_id, form_url="", extra_context=None):
        job = self.get_object(request, unquote(object_id))
        context = dict(extra_context or {})
        if job is not None:
            text, start, end = reader.log_tail(job.id, LOG_TAIL_BYTES)
            pk = quote(job.pk)
            context.update(
                job=job,
                job_final=job.status in FINAL_STATUSES,
                can_operate=self.has_operate_permission(request),
                log_text=text,
                log_start=start,
                log_offset=end,
                log_url=reverse("admin:builds_job_log", args=[pk]),
                log_download_url=reverse("admin:builds_job_log_download", args=[pk]),
                cancel_url=reverse("admin:builds_job_cancel", args=[pk]),
                rebuild_url=reverse("admin:builds_job_rebuild", args=[pk]),
                redeliver_url=reverse("admin:builds_job_redeliver", args=[pk]),
                has_callback=job.callback_events.exists(),
            )
        return super().change_view(request, object_id, form_url, context)

    def get_urls(self):
        view = self.admin_site.admin_view
        return [
            path("<path:object_id>/log/", view(self.log_view), name="builds_job_log"),
            path("<path:object_id>/log/download/", view(self.log_download_view), name="builds_job_log_download"),
            path("<path:object_id>/cancel/", view(self.cancel_view), name="builds_job_cancel"),
            path("<path:object_id>/rebuild/", view(self.rebuild_view), name="builds_job_rebuild"),
            path("<path:object_id>/redeliver/", view(self.redeliver_view), name="builds_job_redeliver"),
        ] + super().get_urls()

    def _job_for(self, request, object_id, *, operate: bool = False) -> Job:
        job = self.get_object(request, unquote(object_id))
        if job is None:
            raise Http404("no such job")
        if not self.has_view_permission(request, job) or (operate and not self.has_operate_permission(request)):
            raise PermissionDenied
        return job

    def log_view(self, request, object_id):
        """The log from ?offset= (one bounded batch) and the job's status, for the page's live log."""
        job = self._job_for(request, object_id)
        raw = request.GET.get("offset", "0")
        offset = int(raw) if raw.isdigit() else 0
        # Status before the bytes: whatever was written before the job ended is in this read.
        state = Job.objects.filter(pk=job.pk).values("status", "progress").first() or {}
        pieces, position = reader.read_batch(job.id, offset)
        return JsonResponse({
            "data": b"".join(pieces).decode("utf-8", "replace"),
            "offset": position,
            "status": state.get("status"),
            "final": state.get("status") in FINAL_STATUSES,
            "progress": _progress_text(state.get("progress")),
        })

    def log_download_view(self, request, object_id):
        job = self._job_for(request, object_id)
        cursor = reader.LogCursor(job.id, 0, end=writer.log_end(job.id))
        response = logstream.LogStreamingResponse(cursor, content_type="text/plain; charset=utf-8")
        response["Content-Disposition"] = f'attachment; filename="{job.id}.log"'
        return response

    def cancel_view(self, request, object_id):
        if request.method != "POST":
            return HttpResponseNotAllowed(["POST"])
        job = self._job_for(request, object_id, operate=True)
        self._cancel(request, job)
        return HttpResponseRedirect(reverse("admin:builds_job_change", args=[quote(job.pk)]))

    def rebuild_view(self, request, object_id):
        if request.method != "POST":
            return HttpResponseNotAllowed(["POST"])
        job = self._job_for(request, object_id, operate=True)
        new = self._rebuild(request, job)
        target = new or job
        return HttpResponseRedirect(reverse("admin:builds_job_change", args=[quote(target.pk)]))

    def redeliver_view(self, request, object_id):
        """One new attempt at the job's latest webhook event, recorded with who asked."""
        if request.method != "POST":
            return HttpResponseNotAllowed(["POST"])
        job = self._job_for(request, object_id, operate=True)
        event = job.callback_events.order_by("-created_at", "-pk").first()
        if event is None:
            self.message_user(request, f"Job {job.id} has no webhook event", messages.WARNING)
        else:
            try:
                attempt = callbacks.redeliver(event.pk, requested_by=f"admin {request.user.get_username()}")
            except callbacks.DeliveryBusy:
                self.message_user(request, "An attempt at this event is being made now", messages.WARNING)
            else:
                ok = attempt.http_status is not None and 200 <= attempt.http_status < 300
                self.message_user(request, f"Webhook sent again: {attempt.error or f'HTTP {attempt.http_status}'}",
                                  messages.SUCCESS if ok else messages.ERROR)
        return HttpResponseRedirect(reverse("admin:builds_job_change", args=[quote(job.pk)]))

    # --- actions ---------------------------------------------------------------------------

    @admin.action(description="Cancel the selected jobs", permissions=["operate"])
    def cancel_jobs(self, request, queryset):
        for job in queryset:
            self._cancel(request, job)

    @admin.action(description="Rebuild the selected jobs (new jobs, same source and settings)", permissions=["operate"])
    def rebuild_jobs(self, request, queryset):
        for job in queryset:
            self._rebuild(request, job)

    def _cancel(self, request, job: Job) -> None:
        updated, accepted = lifecycle.job_cancel(job_id=job.id)
        if updated is None:
            self.message_user(request, f"No job {job.id}", messages.ERROR)
        elif not accepted:
            self.message_user(request, f"Job {job.id} already ended ({updated.status})", messages.WARNING)
        elif updated.status == "canceled":
            self.message_user(request, f"Job {job.id} canceled", messages.SUCCESS)
        else:
            self.message_user(request, f"Job {job.id}: cancel requested; the build stops within a few seconds",
                              messages.SUCCESS)

    def _rebuild(self, request, job: Job) -> Job | None:
        """Validated exactly like an API request, so today's policy (allowed hosts, commands)
        applies to the rebuild."""
        try:
            new, _ = submit.job_submit(request=rebuild.rebuild_request(job))
        except (UserError, ValidationError, jobs.JobConflict, jobs.SecretsUnreadable) as exc:
            reason = first_message(exc.detail) if isinstance(exc, ValidationError) else getattr(exc, "message", "id taken")
            self.message_user(request, f"Cannot rebuild job {job.id}: {reason}", messages.ERROR)
            return None
        self.message_user(request, f"Job {job.id} rebuilt as {new.id}", messages.SUCCESS)
        return new


class CallbackAttemptInline(admin.TabularInline):
    model = CallbackAttempt
    extra = 0
    can_delete = False
    readonly_fields = ("at", "http_status", "error", "duration_ms", "requested_by")

    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False


@admin.register(CallbackEvent)
class CallbackEventAdmin(admin.ModelAdmin):
    list_display = ("id", "job", "state", "attempts", "next_attempt_at", "delivered_at")
    list_filter = ("state",)
    search_fields = ("job__id",)
    readonly_fields = ("id", "job", "url", "body", "state", "attempts", "next_attempt_at", "created_at", "delivered_at", "last_error")
    exclude = ("locked_until",)
    inlines = [CallbackAttemptInline]

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


@admin.register(TenantLimit)
class TenantLimitAdmin(admin.ModelAdmin):
    """Builds at once per user or project; wins over configs/limits.json and the defaults."""

    list_display = ("kind", "name", "max_builds")
    list_filter = ("kind",)
    search_fields = ("name",)

    def _changed(self):
        # Room may have opened for jobs held back by the old limit.
        queue.kick(at_most=10)

    def save_model(self, request, obj, form, change):
        super().save_model(request, obj, form, change)
        self._changed()

    def delete_model(self, request, obj):
        super().delete_model(request, obj)
        self._changed()

    def delete_queryset(self, request, queryset):
        super().delete_queryset(request, queryset)
        self._changed()
