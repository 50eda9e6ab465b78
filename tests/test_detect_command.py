"""`manage.py detect PATH` prints what a zero-config build would do, without building."""

import json

from django.core.management import call_command
from django.core.management.base import CommandError
import pytest


def test_detect_prints_settings_and_dockerfile(tmp_path, capsys):
    (tmp_path / "package.json").write_text(json.dumps({"name": "web", "scripts": {"start": "node server.js"}}))
    (tmp_path / "package-lock.json").write_text(json.dumps({"name": "web", "lockfileVersion": 3, "packages": {}}))
    (tmp_path / "server.js").write_text("require('http').createServer((q, s) => s.end('ok')).listen(3000)\n")
    (tmp_path / ".nvmrc").write_text("20\n")
    call_command("detect", str(tmp_path), "--config", '{"isAutoBuild": true}')
    out = capsys.readouterr().out
    assert "node" in out and "FROM node:20-bookworm-slim" in out and "npm ci" in out


def test_detect_reports_an_unbuildable_directory_clearly(tmp_path):
    (tmp_path / "notes.txt").write_text("nothing here")
    with pytest.raises((CommandError, SystemExit)) as error:
        call_command("detect", str(tmp_path), "--config", '{"isAutoBuild": true}')
    assert "NOTHING_TO_BUILD" in str(error.value) or "nothing" in str(error.value).lower()
