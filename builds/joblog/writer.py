"""Writing job logs: append-only chunks in the database, masked (builds/joblog/masking.py)
before they are stored.

Lines look like ``[2026-11-27T03:28:50.123Z] text``. Writers append whole chunks at the current
end of the log; when a log outgrows LOG_MAX_BYTES its first half is kept, the newest bytes are
kept, and the chunks between are deleted. Readers (builds/joblog/reader.py) show such a gap as
one marker line.
"""

import time
from collections import deque
from datetime import datetime, timezone

from django.conf import settings
from django.db import DatabaseError, IntegrityError, transaction

from builds.joblog.masking import Masker
from builds.models import LogChunk
from builds.services.operations import dbfaults

def timestamp() -> str:
    now = datetime.now(timezone.utc)
    return now.strftime("%Y-%m-%dT%H:%M:%S.") + f"{now.microsecond // 1000:03d}Z"


def format_lines(text: str) -> str:
    stamp = timestamp()
    return "".join(f"[{stamp}] {line}\n" for line in text.splitlines() or [""])


def log_end(job_id: str) -> int:
    """The offset just after the job's last byte (0 for no log)."""
    last = LogChunk.objects.filter(job_id=job_id).order_by("-offset").values_list("offset", "data").first()
    return last[0] + len(last[1]) if last else 0


def append_chunk(job_id: str, data: bytes) -> int:
    """Append bytes at the end of the job's log; returns the new end offset."""
    if not data:
        return log_end(job_id)
    for _ in range(20):
        try:
            with transaction.atomic():
                end = log_end(job_id)
                LogChunk.objects.create(job_id=job_id, offset=end, data=data)
                new_end = end + len(data)
                if new_end > settings.LOG_MAX_BYTES:
                    _trim_middle(job_id, new_end)
                return new_end
        except IntegrityError:  # another writer appended at the same offset first; go again
            time.sleep(0.01)
    raise RuntimeError(f"could not append to the log of job {job_id}")


def _trim_middle(job_id: str, end: int) -> None:
    """Keep the first half of the allowed size and the newest bytes; drop whole chunks between."""
    head = settings.LOG_MAX_BYTES // 2
    tail_start = end - (settings.LOG_MAX_BYTES - head)
    doomed = [
        pk
        for pk, offset, data in LogChunk.objects.filter(
            job_id=job_id, offset__gte=head, offset__lt=tail_start
        ).values_list("pk", "offset", "data")
        if offset + len(data) <= tail_start
    ]
    if doomed:
        LogChunk.objects.filter(pk__in=doomed).delete()


def start_logs(job_ids: list[str], text: str) -> None:
    """The first lines of the logs of jobs just created (in their creation's transaction)."""
    data = format_lines(Masker()(text)).encode("utf-8", "replace")
    LogChunk.objects.bulk_create([LogChunk(job_id=job_id, offset=0, data=data) for job_id in job_ids])


def append_text(job_id: str, text: str, masker: Masker | None = None) -> int:
    """Append timestamped lines (used by the API, the reaper and the pipeline's own steps)."""
    masker = masker or Masker()
    return append_chunk(job_id, format_lines(masker(text)).encode("utf-8", "replace"))


class LogWriter:
    """Buffers a running build's output and appends it every FLUSH_SECONDS or FLUSH_BYTES,
    so readers see progress while the build runs without one write per line.

    While the database is briefly unavailable (locked, or its connection dropped) the lines
    stay here and are written on a later try; past MAX_BUFFER_BYTES the oldest kept lines give
    way to the newest, and a marker says how much was dropped."""

    FLUSH_SECONDS = 0.25
    FLUSH_BYTES = 64 * 1024
    MAX_BUFFER_BYTES = 4 * 1024 * 1024
    RETRY_MAX_SECONDS = 4.0

    def __init__(self, job_id: str, masker: Masker):
        self.job_id = job_id
        self.masker = masker
        self._buffer: deque[bytes] = deque()
        self._size = 0
        self._dropped = 0
        self._last_flush = time.monotonic()
        self._failures = 0
        self._retry_at = 0.0

    def line(self, text: str) -> None:
        data = f"[{timestamp()}] {self.masker(text)}\n".encode("utf-8", "replace")
        self._buffer.append(data)
        self._size += len(data)
        while self._size > self.MAX_BUFFER_BYTES and len(self._buffer) > 1:
            self._size -= len(dropped := self._buffer.popleft())
            self._dropped += len(dropped)
        if self._size >= self.FLUSH_BYTES and time.monotonic() >= self._retry_at:
            self._try_flush()

    def lines(self, text: str) -> None:
        for part in text.splitlines() or [""]:
            self.line(part)

    def tick(self) -> None:
        now = time.monotonic()
        if self._buffer and now - self._last_flush >= self.FLUSH_SECONDS and now >= self._retry_at:
            self._try_flush()

    def _try_flush(self) -> None:
        """One short try from the build's output loop; a transient error keeps the lines."""
        try:
            with dbfaults.short_lock_wait(self.FLUSH_SECONDS):
                self._write()
        except DatabaseError as exc:
            if not dbfaults.is_transient(exc):
                raise
            dbfaults.recover()
            self._failures += 1
            self._retry_at = time.monotonic() + min(self.RETRY_MAX_SECONDS, self.FLUSH_SECONDS * 2**self._failures)

    def flush(self) -> None:
        """Write every kept line now, trying again through transient errors for up to
        LEASE_SECONDS (the attempt cannot go on without the database longer than that)."""
        dbfaults.retrying(self._write, seconds=settings.LEASE_SECONDS, what=f"log of job {self.job_id}")

    def _write(self) -> None:
        if self._buffer:
            data = b"".join(self._buffer)
            if self._dropped:
                data = (f"[{timestamp()}] [... {self._dropped} bytes of build output dropped: the database was "
                        f"unavailable for too long ...]\n").encode() + data
            append_chunk(self.job_id, data)
            self._buffer.clear()
            self._size = self._dropped = 0
        self._last_flush = time.monotonic()
        self._failures, self._retry_at = 0, 0.0
