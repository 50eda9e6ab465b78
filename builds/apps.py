from django.apps import AppConfig


class BuildsConfig(AppConfig):
    name = "builds"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self):
        from . import signals  # noqa: F401  (worker start-up hooks)
