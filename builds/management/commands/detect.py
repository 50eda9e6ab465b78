"""`manage.py detect PATH [--config JSON]`: what a build of the directory would detect and the
Dockerfile it would generate, without building anything. For operators and for debugging."""

import json
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from builds.dockerfile import plan_build
from builds.errors import UserError


class Command(BaseCommand):
    help = "Print the detected build settings (JSON) and the generated Dockerfile for a directory."

    def add_arguments(self, parser):
        parser.add_argument("path", help="the app directory (a checkout, or workingDir inside one)")
        parser.add_argument("--config", default=None,
                            help='buildConfig as JSON, or @FILE to read it from a file (default {"isAutoBuild": true})')
        parser.add_argument("--repo-root", default=None, help="the checkout's root, when PATH is a subdirectory")
        parser.add_argument("--json", dest="as_json", action="store_true", help="print one JSON object, Dockerfile included")

    def handle(self, *args, path, config, repo_root, as_json=False, **options):
        app_dir = Path(path)
        if not app_dir.is_dir():
            raise CommandError(f"{path} is not a directory")
        build_config = _read_config(config)
        try:
            plan = plan_build(app_dir, build_config, repo_root=Path(repo_root) if repo_root else app_dir)
        except UserError as exc:
            raise CommandError(f"{exc.code}: {exc.message}") from None
        settings = plan.as_dict()
        if as_json:
            self.stdout.write(_dumps(settings))
            return
        dockerfile = settings.pop("dockerfile")
        self.stdout.write(_dumps(settings))
        self.stdout.write("\n# --- generated Dockerfile ---\n")
        self.stdout.write(dockerfile, ending="")


def _read_config(raw: str | None) -> dict:
    if raw is None:
        return {"isAutoBuild": True}
    text = Path(raw[1:]).read_text(encoding="utf-8") if raw.startswith("@") else raw
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise CommandError(f"--config is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise CommandError("--config must be a JSON object (a buildConfig)")
    return value


def _dumps(value: dict) -> str:
    return json.dumps(value, indent=2)
