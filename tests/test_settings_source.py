"""Settings are read in hubfly/settings.py only (issue 16): the rest of the code takes them from
django.conf.settings, so a test or an operator changes one place. Allowed elsewhere, each for a
stated reason: hubfly/env.py (the readers settings.py uses), hubfly/gunicorn_conf.py (gunicorn's
master never loads Django's settings), and infra/ (standard library tools that run without
Django: the launcher and the build network's policy)."""

import re
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
ALLOWED = {"hubfly/settings.py", "hubfly/env.py", "hubfly/gunicorn_conf.py"}
# A read of the environment; `os.environ.setdefault(...)` (naming the settings module) is not one.
READ = re.compile(r"\bos\.getenv\b|\bos\.environ\b(?!\.setdefault)")


def _readers(*packages: str) -> list[str]:
    found = []
    for package in packages:
        for path in sorted((REPO_ROOT / package).rglob("*.py")):
            name = str(path.relative_to(REPO_ROOT))
            if name in ALLOWED:
                continue
            for number, line in enumerate(path.read_text().splitlines(), 1):
                if READ.search(line.split("#", 1)[0]):
                    found.append(f"{name}:{number}")
    return found


def test_only_settings_read_the_environment():
    assert _readers("builds", "hubfly") == []


def test_the_scan_finds_a_read():
    assert READ.search('PATH = os.environ.get("PATH")') and READ.search("os.getenv('X')")
    assert not READ.search('os.environ.setdefault("DJANGO_SETTINGS_MODULE", "hubfly.settings")')
