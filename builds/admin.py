"""Django admin for jobs: browse, filter, read settings (secrets masked). Statuses are not
editable by hand; every change goes through the services."""

from django.contrib import admin
from django.utils.html import format_html

from builds.models import CallbackAttempt, CallbackEvent, Job
from builds.services import jobs, logs


@admin.register(Job)
class JobAdmin(admin.ModelAdmin):
    list_display = ("id", "status", "project_id", "user_id", "runtime", "duration", "retry_count", "created_at")
    list_filter = ("status", "error_code")
    search_fields = ("id", "project_id", "user_id", "commit_sha", "image_tag")
    date_hierarchy = "created_at"
    readonly_fields = [f.name for f in Job._meta.fields if f.name not in ("source_info", "build_config")] + [
        "source", "settings", "log_tail"
    ]
    exclude = ("source_info", "build_config", "lease", "request_fingerprint")

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    @admin.display(description="runtime")
    def runtime(self, job):
        return (job.build_config or {}).get("runtime") or ""

    @admin.display(description="duration (s)")
    def duration(self, job):
        return job.duration_seconds

    @admin.display(description="source")
    def source(self, job):
        return jobs.masked_source_info(job)

    @admin.display(description="build settings")
    def settings(self, job):
        return jobs.masked_build_config(job)

    @admin.display(description="log (last 20 KB)")
    def log_tail(self, job):
        end = logs.log_end(job.id)
        text = b"".join(logs.read_from(job.id, max(0, end - 20000), end)).decode("utf-8", "replace")
        return format_html("<pre style='white-space:pre-wrap;max-height:40em;overflow:auto'>{}</pre>", text)


class CallbackAttemptInline(admin.TabularInline):
    model = CallbackAttempt
    extra = 0
    can_delete = False
    readonly_fields = ("at", "http_status", "error", "duration_ms")

    def has_add_permission(self, request, obj=None):
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
