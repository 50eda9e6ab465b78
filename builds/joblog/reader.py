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

Under WSGI (the admin, Django's test client) a cursor reads for itself (`LogCursor.step()`,
streamed by builds/api/logstream.py's LogStreamingResponse). In
the web process (ASGI) followers are many and long-lived, so they share: all of one job's
followers are served by one `LogFeed` that polls the job, and every database read of a web
process runs on a few `Readers` threads whose connections are closed whenever no read is
queued. A follower costs a coroutine and its socket, never a thread or a connection of its own;
`LogFollowers` admits at most MAX_LOG_FOLLOWERS of them per web process.
"""

import asyncio
import contextlib
import json
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator

from django.conf import settings
from django.db import connection

from builds.joblog.writer import log_end
from builds.models import FINAL_STATUSES, Job, LogChunk

READ_BATCH_BYTES = 256 * 1024
POLL_SECONDS = 0.5
KEEPALIVE_SECONDS = 15.0
# After the job is final, one more read this much later picks up lines appended right after
# the final status (the reaper and cancel write their last line after the status change).
SETTLE_SECONDS = 1.0
# Threads per web process that run the followers' database reads (each with at most one
# connection), and how much of the newest log a job's feed keeps for the followers it serves.
READER_THREADS = 2
FEED_KEEP_BYTES = 2 * READ_BATCH_BYTES

logger = logging.getLogger(__name__)


def log_exists(job_id: str) -> bool:
    return LogChunk.objects.filter(job_id=job_id).exists()


def read_from(job_id: str, offset: int, end: int) -> Iterator[bytes]:
    """Yield the log bytes in [offset, end), a batch at a time, with a marker for gaps."""
    while offset < end:
        pieces, position = read_batch(job_id, offset, end)
        if position == offset:
            return
        yield from pieces
        offset = position


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
        out = self.take(pieces, position)
        if not self.follow:
            if not got_more or (self.end is not None and position >= self.end):
                out += self.finish(None)
        elif got_more:
            self._final_seen_at = None
        elif status in FINAL_STATUSES or status == "deleted":
            now = time.monotonic()
            if self._final_seen_at is None:
                self._final_seen_at = now
            elif now - self._final_seen_at >= SETTLE_SECONDS:
                out += self.finish(status)
        return out or self.keepalive(), got_more and not self.done

    def take(self, pieces: list[bytes], position: int) -> list[bytes]:
        """What to send for `pieces`, the log from the cursor's position up to `position`."""
        self.position = position
        out = self._present(pieces)
        if out:
            self._last_sent = time.monotonic()
        return out

    def finish(self, status: str | None) -> list[bytes]:
        """The stream is complete (the job became `status`): what is left to send."""
        self.done = True
        out = self._flush_partial()
        if self.sse and self.follow:
            out.append(sse_end(status or "", self.position))
        return out

    def keepalive(self) -> list[bytes]:
        if self.sse and not self.done and time.monotonic() - self._last_sent >= KEEPALIVE_SECONDS:
            # A comment line: keeps proxies from closing an idle stream, and lets the server
            # notice a client that went away.
            self._last_sent = time.monotonic()
            return [b": keepalive\n\n"]
        return []

    @property
    def keepalive_due_in(self) -> float:
        return max(0.05, KEEPALIVE_SECONDS - (time.monotonic() - self._last_sent))

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

    def __iter__(self) -> Iterator[bytes]:
        while not self.done:
            out, more = self.step()
            yield from out
            if not more and not self.done:
                time.sleep(self.wait_seconds)


# --- the web process: followers share readers ------------------------------------------------


class Readers:
    """The threads that run every database read of one web process's log route, however many
    followers it has. A thread closes its connection whenever no read is queued: a connection
    is held while reading, never while a follower waits."""

    def __init__(self, threads: int = READER_THREADS):
        self._size = threads
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []

    async def run(self, fn: Callable, *args):
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        while len(self._threads) < self._size:
            thread = threading.Thread(target=self._work, name=f"log-reader-{len(self._threads)}", daemon=True)
            thread.start()
            self._threads.append(thread)
        self._queue.put((loop, future, fn, args))
        return await future

    def _work(self) -> None:
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                # Closed just before waiting, never "after a read if the queue looks empty": another
                # reader may take the read that was queued then, and this one would wait holding it.
                connection.close()
                item = self._queue.get()
            loop, future, fn, args = item
            result, error = None, None
            try:
                result = fn(*args)
            except BaseException as exc:  # handed to the caller, which raises it
                error = exc
            with contextlib.suppress(RuntimeError):  # the event loop has closed: nobody waits
                loop.call_soon_threadsafe(_settle, future, result, error)


def _settle(future: asyncio.Future, result, error) -> None:
    if future.done():  # the follower went away while its read was queued
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


def _poll(job_id: str, position: int | None) -> tuple[str, list[bytes], int]:
    # The status before the bytes, as in LogCursor.step().
    status = job_status(job_id) or "deleted"
    if position is None:  # a new feed starts at the end: followers behind read for themselves
        return status, [], log_end(job_id)
    pieces, position = read_batch(job_id, position)
    return status, pieces, position


class LogFeed:
    """The one reader of one job's log in a web process: polls the job's status and the log's
    new bytes while the job has followers here, keeps the newest FEED_KEEP_BYTES of them for the
    followers at the end of the log, and wakes those followers when something changed."""

    def __init__(self, job_id: str, readers: Readers):
        self.job_id, self.readers = job_id, readers
        self.followers = 0
        self.end: int | None = None  # the log's end at the last poll (None before the first)
        self.status: str | None = None
        self.complete = False  # final, and nothing was written for SETTLE_SECONDS after that
        self.changed = asyncio.Event()
        self._recent: deque[tuple[int, int, list[bytes]]] = deque()
        self._recent_bytes = 0
        self._final_since: float | None = None
        self.task: asyncio.Task | None = None

    def serve(self, position: int) -> tuple[list[bytes], int] | None:
        """The kept bytes from `position` on, and the position after them; None if not kept."""
        for start, stop, pieces in self._recent:
            if start == position:
                return pieces, stop
            if start < position < stop and sum(map(len, pieces)) == stop - start:  # no gap marker in it
                return [b"".join(pieces)[position - start:]], stop
        return None

    async def run(self) -> None:
        try:
            while self.followers and not self.complete:
                start = self.end
                status, pieces, position = await self.readers.run(_poll, self.job_id, start)
                self._apply(start, status, pieces, position)
                if start is not None and position - start >= READ_BATCH_BYTES:
                    continue  # a full batch: more is probably waiting
                await asyncio.sleep(SETTLE_SECONDS / 2 if self._final_since is not None else POLL_SECONDS)
        except Exception:
            logger.exception("reading the log of job %s failed", self.job_id)
            self.status, self.complete = "unknown", True
            self._wake()

    def _apply(self, start: int | None, status: str, pieces: list[bytes], position: int) -> None:
        changed = start is None or status != self.status
        if start is not None and position > start:
            changed = True
            self._final_since = None
            self._recent.append((start, position, pieces))
            self._recent_bytes += sum(map(len, pieces))
            while self._recent_bytes > FEED_KEEP_BYTES and len(self._recent) > 1:
                self._recent_bytes -= sum(map(len, self._recent.popleft()[2]))
        elif status in FINAL_STATUSES or status == "deleted":
            now = time.monotonic()
            if self._final_since is None:
                self._final_since = now
            elif now - self._final_since >= SETTLE_SECONDS:
                self.complete = changed = True
        self.end, self.status = position, status
        if changed:
            self._wake()

    def _wake(self) -> None:
        self.changed.set()
        self.changed = asyncio.Event()


class LogFollowers:
    """One web process's followers: at most MAX_LOG_FOLLOWERS of them (`admit`), one LogFeed per
    followed job, and the Readers that do their database reads."""

    def __init__(self, limit: int, readers: Readers | None = None):
        self.limit = limit
        self.readers = readers or Readers()
        self.count = 0
        self._feeds: dict[str, LogFeed] = {}

    def admit(self) -> bool:
        if self.count >= self.limit:
            return False
        self.count += 1
        return True

    def release(self) -> None:
        self.count -= 1

    async def follow(self, cursor: LogCursor) -> AsyncIterator[bytes]:
        """What to send to an admitted follower, from `cursor.position` until the job is final."""
        feed = self._feeds.get(cursor.job_id)
        if feed is None:
            feed = self._feeds[cursor.job_id] = LogFeed(cursor.job_id, self.readers)
        feed.followers += 1
        if feed.task is None:
            feed.task = asyncio.create_task(feed.run())
        try:
            while not cursor.done:
                changed = feed.changed  # taken before looking, so no wake-up is missed
                kept = feed.serve(cursor.position) if feed.end is not None else None
                if kept is None and feed.end is not None and cursor.position < feed.end:
                    # Behind what the feed keeps: catch up with reads of its own (on the Readers).
                    before = cursor.position
                    kept = await self.readers.run(read_batch, cursor.job_id, cursor.position)
                    if kept[1] == before:  # nothing readable before the feed's end: wait with it
                        kept = None
                if kept is not None:
                    for piece in cursor.take(*kept):
                        yield piece
                    continue
                if feed.complete and (feed.end is None or cursor.position >= feed.end):
                    for piece in cursor.finish(feed.status):
                        yield piece
                    break
                for piece in cursor.keepalive():
                    yield piece
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(changed.wait(), cursor.keepalive_due_in)
        finally:
            feed.followers -= 1
            if not feed.followers:
                feed.task.cancel()
                if self._feeds.get(cursor.job_id) is feed:
                    del self._feeds[cursor.job_id]

    async def download(self, cursor: LogCursor) -> AsyncIterator[bytes]:
        """A bounded range of the log (not followed), read on the Readers."""
        while not cursor.done:
            out, _ = await self.readers.run(cursor.step)
            for piece in out:
                yield piece


_followers: LogFollowers | None = None


def followers() -> LogFollowers:
    """This web process's LogFollowers (one event loop per process)."""
    global _followers
    if _followers is None:
        _followers = LogFollowers(settings.MAX_LOG_FOLLOWERS)
    return _followers


def log_tail(job_id: str, max_bytes: int) -> tuple[str, int, int]:
    """The last `max_bytes` of the log as text (from a line start where possible), with the
    offset it starts at and the end of the log."""
    end = log_end(job_id)
    start = max(0, end - max_bytes)
    data = b"".join(LogCursor(job_id, start, end=end))
    if start > 0 and b"\n" in data:
        cut = data.index(b"\n") + 1
        data, start = data[cut:], start + cut
    return data.decode("utf-8", "replace"), start, end
