"""Reading a job's log by byte offset in bounded pieces, and following it while it grows.

Every reader here holds at most one batch of chunks (READ_BATCH_BYTES, plus one chunk) in
memory, whatever the size of the log, and finds its starting chunk through the (job, offset)
index instead of scanning from the start. A follower polls the database, so any web process
can follow a log written by a worker on any host.

The same reader serves three shapes of output:
- plain bytes in [start, end) (the non-follow endpoint and the admin's download);
- plain bytes from `start` until the job is final (`?follow=true`);
- Server-Sent Events: each event carries whole log lines as `data:` lines and has as `id:` the
  byte offset just after them, so a client that reconnects with `Last-Event-ID` resumes with
  the next byte. A last `event: end` says the job is final.

Each shape exists as a sync iterator (WSGI, test client) and an async one (ASGI), driven by the
same `LogCursor.step()`; `LogStreamingResponse` picks the one that fits the server.
"""

import asyncio
import json
import time
from collections.abc import AsyncIterator, Iterator

from asgiref.sync import sync_to_async
from django.http import StreamingHttpResponse

from builds.models import FINAL_STATUSES, Job, LogChunk
from builds.services import logs

READ_BATCH_BYTES = 256 * 1024
POLL_SECONDS = 0.5
KEEPALIVE_SECONDS = 15.0
# After the job is final, one more read this much later picks up lines appended right after
# the final status (the reaper and cancel write their last line after the status change).
SETTLE_SECONDS = 1.0


def gap_marker(omitted: int) -> bytes:
    return f"[... {omitted} bytes of log omitted: the log exceeded its size limit ...]\n".encode()


def read_batch(job_id: str, position: int, end: int | None = None) -> tuple[list[bytes], int]:
    """About READ_BATCH_BYTES of the log from `position` (and before `end`): the chunks that
    start in that window, plus the one containing `position`. Returns the pieces (with a gap
    marker where the middle of the log was trimmed) and the position after them; the same
    position means there is nothing new yet."""
    chunks = LogChunk.objects.filter(job_id=job_id).order_by("offset")
    if end is not None:
        chunks = chunks.filter(offset__lt=end)
    # The chunk containing `position` starts at or before it: one index lookup, no scan.
    first = chunks.filter(offset__lte=position).order_by("-offset").values_list("offset", flat=True).first()
    window = chunks.filter(offset__gte=position if first is None else first, offset__lt=position + READ_BATCH_BYTES)
    rows = [(o, bytes(d)) for o, d in window.values_list("offset", "data") if o + len(d) > position]
    if not rows:  # nothing in the window: either no new bytes yet, or a trimmed gap wider than it
        rows = [(o, bytes(d)) for o, d in chunks.filter(offset__gt=position).values_list("offset", "data")[:1]]
    pieces: list[bytes] = []
    for chunk_offset, data in rows:
        if chunk_offset > position:
            pieces.append(gap_marker(chunk_offset - position))
            position = chunk_offset
        stop = len(data) if end is None else min(len(data), end - chunk_offset)
        piece = data[position - chunk_offset : stop]
        pieces.append(piece)
        position += len(piece)
    return pieces, position


def job_status(job_id: str) -> str | None:
    return Job.objects.filter(pk=job_id).values_list("status", flat=True).first()


def sse_event(lines: bytes, event_id: int) -> bytes:
    """One SSE event whose data is `lines` (whole lines, each ending in a newline)."""
    text = lines.decode("utf-8", "replace").replace("\r\n", "\n").replace("\r", "\n")
    body = "".join(f"data: {line}\n" for line in text.split("\n")[:-1])
    return f"id: {event_id}\n{body}\n".encode()


def sse_end(status: str, offset: int) -> bytes:
    return f"id: {offset}\nevent: end\ndata: {json.dumps({'status': status, 'offset': offset})}\n\n".encode()


class LogCursor:
    """One reader's position in one job's log. `step()` does one round of database reads and
    returns what to send now, and whether the stream is complete."""

    def __init__(self, job_id: str, start: int, *, end: int | None = None, follow: bool = False, sse: bool = False):
        self.job_id = job_id
        self.position = start
        self.end = end
        self.follow = follow
        self.sse = sse
        self._partial = b""  # SSE only: bytes of a line whose newline has not been written yet
        self._final_status: str | None = None
        self._final_seen_at: float | None = None
        self._last_sent = time.monotonic()
        self.done = False

    def step(self) -> tuple[list[bytes], bool]:
        """Returns (pieces to send, more is already waiting)."""
        if self.done:
            return [], False
        # Read the status before the bytes: whatever was written before the job became
        # final is then certainly in the read that follows.
        status = job_status(self.job_id) if self.follow else None
        if self.follow and status is None:  # the job was deleted while we followed it
            status = "deleted"
        pieces, position = read_batch(self.job_id, self.position, self.end)
        got_more = position > self.position
        self.position = position
        out = self._present(pieces)
        if not self.follow:
            self.done = not got_more or (self.end is not None and position >= self.end)
        elif got_more:
            self._final_seen_at = None
        elif status in FINAL_STATUSES or status == "deleted":
            now = time.monotonic()
            if self._final_seen_at is None:
                self._final_seen_at = now
            elif now - self._final_seen_at >= SETTLE_SECONDS:
                self._final_status = status
                self.done = True
        if self.done:
            out += self._flush_partial()
            if self.sse and self.follow:
                out.append(sse_end(self._final_status or status or "", self.position))
        if out:
            self._last_sent = time.monotonic()
        elif self.sse and time.monotonic() - self._last_sent >= KEEPALIVE_SECONDS:
            # A comment line: keeps proxies from closing an idle stream, and lets the server
            # notice a client that went away.
            out = [b": keepalive\n\n"]
            self._last_sent = time.monotonic()
        return out, got_more and not self.done

    @property
    def wait_seconds(self) -> float:
        if self._final_seen_at is not None:
            return SETTLE_SECONDS / 2
        return POLL_SECONDS

    def _present(self, pieces: list[bytes]) -> list[bytes]:
        if not self.sse or not pieces:
            return pieces
        data = self._partial + b"".join(pieces)
        cut = data.rfind(b"\n") + 1
        self._partial = data[cut:]
        if not cut:
            return []
        return [sse_event(data[:cut], self.position - len(self._partial))]

    def _flush_partial(self) -> list[bytes]:
        if not self._partial:
            return []
        event = sse_event(self._partial + b"\n", self.position)
        self._partial = b""
        return [event]

    # --- drivers -----------------------------------------------------------------------------

    def __iter__(self) -> Iterator[bytes]:
        while not self.done:
            out, more = self.step()
            yield from out
            if not more and not self.done:
                time.sleep(self.wait_seconds)

    async def __aiter__(self) -> AsyncIterator[bytes]:
        # Thread-sensitive: under Django's ASGI handler each request has its own thread for
        # this, so followers do not queue behind each other, and the request's database
        # connection is closed with the request.
        step = sync_to_async(self.step, thread_sensitive=True)
        while not self.done:
            out, more = await step()
            for piece in out:
                yield piece
            if not more and not self.done:
                await asyncio.sleep(self.wait_seconds)


class LogStreamingResponse(StreamingHttpResponse):
    """Streams a LogCursor: synchronously under WSGI (and in Django's test client), and
    asynchronously under ASGI, where a plain StreamingHttpResponse over a sync iterator
    would first read the whole log into a list."""

    def __init__(self, cursor: LogCursor, **kwargs):
        super().__init__(iter(cursor), **kwargs)
        self._cursor = cursor

    async def __aiter__(self):
        async for piece in self._cursor.__aiter__():
            yield piece


def log_tail(job_id: str, max_bytes: int) -> tuple[str, int, int]:
    """The last `max_bytes` of the log as text (from a line start where possible), with the
    offset it starts at and the end of the log."""
    end = logs.log_end(job_id)
    start = max(0, end - max_bytes)
    data = b"".join(LogCursor(job_id, start, end=end))
    if start > 0 and b"\n" in data:
        cut = data.index(b"\n") + 1
        data, start = data[cut:], start + cut
    return data.decode("utf-8", "replace"), start, end
