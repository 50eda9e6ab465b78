"""Masking what a log or a payload must not show: the job's secret values and the credentials
inside URLs, replaced before anybody can see them (the log is stored masked)."""

import re
from collections.abc import Iterable

MASK = "***"
_URL_CREDENTIALS = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/@\s]+@")
_MIN_SECRET_LENGTH = 3


def mask_url_credentials(text: str) -> str:
    return _URL_CREDENTIALS.sub(lambda m: m.group(1) + MASK + "@", text)


class Masker:
    """Replaces secret values and URL credentials in text before anybody can see it.

    Build output is masked line by line, so a secret of several lines (a PEM key) is also
    masked line by line: each of its lines is a secret value of its own."""

    def __init__(self, secrets: Iterable[str] = ()):
        candidates = set()
        for secret in secrets:
            candidates.add(secret)
            candidates.update(line.strip() for line in secret.splitlines())
        values = sorted({s for s in candidates if s and len(s) >= _MIN_SECRET_LENGTH}, key=len, reverse=True)
        self._pattern = re.compile("|".join(re.escape(v) for v in values)) if values else None

    def __call__(self, text: str) -> str:
        if self._pattern is not None:
            text = self._pattern.sub(MASK, text)
        return mask_url_credentials(text)
