"""The fair queue: which job a free build slot starts next, the per-tenant limits, and where a
pending job stands.

The broker's messages only say "there is work". A slot that gets one takes the best job that
may start now, by this rule over the job table (`pick`):

1. jobs that may start: pending, no cancel requested, past their retry time, their user under
   its limit and their project under its limit;
2. the user with the fewest builds running, then the one served longest ago (round-robin);
3. within that user, the project by the same rule;
4. within that project, the highest `priority`, then the oldest job.

A message whose slot finds nothing to start is acknowledged and counted as owed
(`message_unused`); when a build ends, `kick` publishes one owed message if a job may start
now, so a job over its tenant's limit waits without a message or a slot and starts when its
tenant has room again. The reaper kicks too, as a safety net.
"""

import heapq
import json
import logging
import math
import threading
import time
from collections import Counter, defaultdict, deque
from dataclasses import dataclass, field
from pathlib import Path

from django.conf import settings
from django.db import IntegrityError, connection, transaction
from django.db.models import Count, F, Max, Min, Q, QuerySet
from django.db.models.functions import Now

from builds.models import ACTIVE_STATUSES, Job, ServiceCounter, Status, TenantLimit
from builds.services.state import dispatch

log = logging.getLogger(__name__)

OWED_COUNTER = "queue_owed_messages"
SLOTS_BUSY = "slots busy"
_NEVER = -math.inf
_LOCK_KEY = 0x6875_6266  # any constant: the advisory lock that serializes claims on PostgreSQL


# --- limits --------------------------------------------------------------------------------


class LimitsFileError(Exception):
    pass


_file_cache: dict[Path, tuple[float, dict]] = {}


def _limits_file() -> dict:
    """configs/limits.json: {"users": {"<userId>": n}, "projects": {"<projectId>": n}}, re-read
    when it changes. A missing file means no overrides."""
    path = Path(settings.LIMITS_FILE)
    try:
        mtime = path.stat().st_mtime
    except FileNotFoundError:
        return {"users": {}, "projects": {}}
    cached = _file_cache.get(path)
    if cached and cached[0] == mtime:
        return cached[1]
    try:
        data = json.loads(path.read_text())
        parsed = {kind: {str(k): int(v) for k, v in (data.get(kind) or {}).items()} for kind in ("users", "projects")}
        if any(v < 0 for kind in parsed.values() for v in kind.values()):
            raise ValueError("a limit is negative")
    except (OSError, ValueError, TypeError, AttributeError) as exc:
        raise LimitsFileError(f"{path}: {exc}") from None
    _file_cache[path] = (mtime, parsed)
    return parsed


@dataclass
class Limits:
    """Builds at once per user and per project; 0 means no limit."""

    users: dict[str, int] = field(default_factory=dict)
    projects: dict[str, int] = field(default_factory=dict)

    def user(self, user_id: str) -> int:
        return self.users.get(user_id, settings.MAX_BUILDS_PER_USER)

    def project(self, project_id: str) -> int:
        return self.projects.get(project_id, settings.MAX_BUILDS_PER_PROJECT)


def limits_for(users, projects) -> Limits:
    """The limits of these tenants: the admin's wins over the file's, which wins over the default."""
    try:
        from_file = _limits_file()
    except LimitsFileError as exc:  # a broken file must not stop the queue: the defaults apply
        log.error("ignoring the limits file: %s", exc)
        from_file = {"users": {}, "projects": {}}
    limits = Limits(
        users={u: from_file["users"][u] for u in users if u in from_file["users"]},
        projects={p: from_file["projects"][p] for p in projects if p in from_file["projects"]},
    )
    rows = TenantLimit.objects.filter(
        Q(kind=TenantLimit.Kind.USER, name__in=list(users)) | Q(kind=TenantLimit.Kind.PROJECT, name__in=list(projects))
    ).values_list("kind", "name", "max_builds")
    for kind, name, max_builds in rows:
        (limits.users if kind == TenantLimit.Kind.USER else limits.projects)[name] = max_builds
    return limits


# --- the rule ------------------------------------------------------------------------------


@dataclass
class Tenants:
    """What the rule needs to know about the users and projects that have waiting jobs."""

    limits: Limits
    user_active: Counter
    project_active: Counter
    user_served: dict[str, float]
    project_served: dict[str, float]

    def blocked(self, user_id: str, project_id: str) -> str:
        """Why a job of this user and project may not start now ("" when it may)."""
        limit = self.limits.user(user_id)
        if limit and self.user_active[user_id] >= limit:
            return f"user limit {limit} reached"
        limit = self.limits.project(project_id)
        if limit and self.project_active[project_id] >= limit:
            return f"project limit {limit} reached"
        return ""

    def choose(self, groups: dict[tuple[str, str], float]) -> tuple[str, str] | None:
        """The (user, project) whose job goes next, among `groups`: {(user, project): when its
        oldest waiting job was created}. Between tenants never served, the longest waiting first."""
        open_groups = {key: oldest for key, oldest in groups.items() if not self.blocked(*key)}
        if not open_groups:
            return None
        oldest_of_user: dict[str, float] = {}
        for (user, _), oldest in open_groups.items():
            oldest_of_user[user] = min(oldest, oldest_of_user.get(user, math.inf))
        user = min(oldest_of_user,
                   key=lambda u: (self.user_active[u], self.user_served.get(u, _NEVER), oldest_of_user[u], u))
        _, project = min(
            (key for key in open_groups if key[0] == user),
            key=lambda k: (self.project_active[k[1]], self.project_served.get(k[1], _NEVER), open_groups[k], k[1]),
        )
        return user, project

    def serve(self, user_id: str, project_id: str, at: float) -> None:
        self.user_active[user_id] += 1
        self.project_active[project_id] += 1
        self.user_served[user_id] = self.project_served[project_id] = at


def tenants(users: set[str], projects: set[str]) -> Tenants:
    active = Job.objects.filter(status__in=ACTIVE_STATUSES)
    user_active = Counter(
        dict(active.filter(user_id__in=users).values_list("user_id").annotate(n=Count("pk")).order_by())
    )
    project_active = Counter(
        dict(active.filter(project_id__in=projects).values_list("project_id").annotate(n=Count("pk")).order_by())
    )

    def served(name: str, keys: set[str]) -> dict[str, float]:
        rows = (Job.objects.filter(**{f"{name}__in": keys}, claimed_at__isnull=False)
                .values_list(name).annotate(at=Max("claimed_at")).order_by())
        return {key: at.timestamp() for key, at in rows}

    return Tenants(limits_for(users, projects), user_active, project_active,
                   served("user_id", users), served("project_id", projects))


def waiting() -> QuerySet:
    """Pending jobs that no cancel is about to end."""
    return Job.objects.filter(status=Status.PENDING, cancel_requested_at__isnull=True)


def startable() -> QuerySet:
    """Waiting jobs past their retry time (tenant limits aside)."""
    return waiting().filter(Q(enqueued_at__isnull=True) | Q(enqueued_at__lte=Now()))


def pick() -> str | None:
    """The id of the job the rule starts next, or None when no job may start now. The caller
    claims it with a conditional update, under `lock()`."""
    rows = startable().values_list("user_id", "project_id").annotate(oldest=Min("created_at")).order_by()
    groups = {(user, project): oldest.timestamp() for user, project, oldest in rows}
    if not groups:
        return None
    chosen = tenants({u for u, _ in groups}, {p for _, p in groups}).choose(groups)
    if chosen is None:
        return None
    user_id, project_id = chosen
    best = startable().filter(user_id=user_id, project_id=project_id).order_by("-priority", "created_at", "pk")
    return best.values_list("pk", flat=True).first()


def lock() -> None:
    """Serialize claims for the rest of the transaction, so two slots never both see room
    under a tenant's limit. SQLite's IMMEDIATE transactions serialize writers already."""
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(%s)", [_LOCK_KEY])


# --- owed messages -------------------------------------------------------------------------


def message_unused() -> None:
    """A slot found nothing to start: its message is gone, and the job it stood for (if it
    still waits) is owed one. Never more owed than jobs wait: a duplicate message (a reaper's
    re-send) of a job that started meanwhile is owed to no one."""
    held = waiting().count()
    if not held:
        return
    if not ServiceCounter.objects.filter(pk=OWED_COUNTER).exists():
        try:
            with transaction.atomic():
                ServiceCounter.objects.create(name=OWED_COUNTER, value=0)
        except IntegrityError:  # created meanwhile by another slot
            pass
    ServiceCounter.objects.filter(pk=OWED_COUNTER, value__lt=held).update(value=F("value") + 1)


def kick(at_most: int = 1) -> int:
    """Room for another build may have opened (a build ended, a limit changed): publish owed
    messages while a job may start now. Returns how many were published."""
    published = 0
    for _ in range(at_most):
        job_id = pick()
        if job_id is None:
            break
        if not ServiceCounter.objects.filter(pk=OWED_COUNTER, value__gt=0).update(value=F("value") - 1):
            break
        dispatch.publish(job_id)
        published += 1
    return published


# --- where a pending job stands ------------------------------------------------------------


def places(job_id: str | None = None) -> dict[str, dict]:
    """{job id: {position, ahead, reason}} for every waiting job (with `job_id`: for that one
    alone, which saves placing the jobs behind it).

    Positions follow the rule as if the jobs started one after the other from now on: jobs
    that may start now first, in the rule's order; then, as if the running builds had ended,
    those that wait for a tenant's limit; jobs waiting for a retry time come last, by that
    time. Build durations are unknown, so a position is an estimate; the reason is exact."""
    rows = list(waiting().order_by("-priority", "created_at", "pk")
                .values_list("pk", "user_id", "project_id", "enqueued_at", "created_at"))
    if not rows:
        return {}
    now = Job.objects.annotate(now=Now()).values_list("now", flat=True).first()  # the database's clock
    later = sorted((r for r in rows if r[3] and r[3] > now), key=lambda r: (r[3], r[0]))
    later_ids = {r[0] for r in later}
    state = tenants({r[1] for r in rows}, {r[2] for r in rows})
    reasons = {}
    queues: dict[tuple[str, str], deque] = defaultdict(deque)
    groups: dict[tuple[str, str], float] = {}
    for pk, user_id, project_id, due, created_at in rows:
        if pk in later_ids:
            reasons[pk] = f"waiting for retry at {due.isoformat().replace('+00:00', 'Z')}"
        else:
            reasons[pk] = state.blocked(user_id, project_id) or SLOTS_BUSY
            key = (user_id, project_id)
            queues[key].append(pk)
            # Only breaks ties between tenants never served, which have lost no job yet.
            groups[key] = min(created_at.timestamp(), groups.get(key, math.inf))
    order = _simulate(state, queues, groups, stop_at=job_id)
    order += [r[0] for r in later]
    placed = {j: {"position": i + 1, "ahead": i, "reason": reasons[j]} for i, j in enumerate(order)}
    return placed if job_id is None else {job_id: placed[job_id]} if job_id in placed else {}


# Places served to the API: recomputed when the queue's signature (how many jobs wait or run,
# and the newest change among them) moves, and at least every PLACES_MAX_AGE_SECONDS, which
# bounds what the signature cannot see (a tenant limit edited, a retry time passing).
PLACES_MAX_AGE_SECONDS = 1.0
_places_cache: tuple = (None, -math.inf, {})  # (signature, computed at, places), replaced whole
_places_lock = threading.Lock()


# The queue's signature. Plain SQL without parameters: it runs on every read of a pending job
# (here and on builds.api.reads' own SQLite connection), the ORM's compiling costs more than the
# query, and the values are only compared.
SIGNATURE_SQL = (f"SELECT COUNT(*), MAX(updated_at) FROM {Job._meta.db_table} WHERE status IN "
                 f"({', '.join(repr(str(s)) for s in (Status.PENDING, *ACTIVE_STATUSES))})")


def _signature() -> tuple:
    with connection.cursor() as cursor:
        cursor.execute(SIGNATURE_SQL)
        return tuple(cursor.fetchone())


def cached_places() -> dict[str, dict]:
    """`places()`, shared by the requests of this process while the queue is unchanged: with
    hundreds of jobs waiting, computing it per request costs more than the rest of a read.
    One computation at a time: requests that waited for it take its result."""
    asked_at = time.monotonic()
    signature = _signature()
    global _places_cache
    cached_signature, at, placed = _places_cache
    if cached_signature == signature and asked_at - at < PLACES_MAX_AGE_SECONDS:
        return placed
    with _places_lock:
        _, at, placed = _places_cache
        if at >= asked_at:
            return placed
        at = time.monotonic()
        signature = _signature()
        placed = places()
        _places_cache = (signature, at, placed)
        return placed


def waiting_reason(user_id: str, project_id: str) -> str:
    """Why a job of this user and project that may start by time would wait now: the reason
    `places` gives it, without placing it among the others."""
    counts = Job.objects.filter(status__in=ACTIVE_STATUSES).aggregate(
        user=Count("pk", filter=Q(user_id=user_id)), project=Count("pk", filter=Q(project_id=project_id)))
    if not counts["user"] and not counts["project"]:
        return SLOTS_BUSY  # a limit is at least 1 (0: none), so nothing running holds it back
    state = Tenants(limits_for({user_id}, {project_id}), Counter({user_id: counts["user"]}),
                    Counter({project_id: counts["project"]}), {}, {})
    return state.blocked(user_id, project_id) or SLOTS_BUSY


def _simulate(state: Tenants, queues: dict[tuple[str, str], deque], groups: dict[tuple[str, str], float],
              stop_at: str | None = None) -> list[str]:
    """The order in which repeated `Tenants.choose` would start the queued jobs, in
    O(jobs x log users) rather than O(jobs x groups): users in a heap (entries whose key went
    stale are pushed again), a user's projects scanned when the user is chosen. Within a wave
    the counts only grow, so a tenant blocked stays blocked until the next wave."""
    projects_of: dict[str, list[str]] = defaultdict(list)
    oldest_of_user: dict[str, float] = {}
    for (user, project), oldest in groups.items():
        projects_of[user].append(project)
        oldest_of_user[user] = min(oldest, oldest_of_user.get(user, math.inf))

    def key(user: str) -> tuple:
        return (state.user_active[user], state.user_served.get(user, _NEVER), oldest_of_user[user], user)

    heap = [key(user) for user in projects_of]
    heapq.heapify(heap)
    aside: list[str] = []
    order: list[str] = []
    tick = 0.0
    while heap or aside:
        if not heap:  # the rest waits for limits: as if the running builds had ended
            state.user_active.clear()
            state.project_active.clear()
            heap = [key(user) for user in aside]
            heapq.heapify(heap)
            aside = []
        entry = heapq.heappop(heap)
        user = entry[-1]
        if entry != key(user):
            heapq.heappush(heap, key(user))
            continue
        open_projects = [p for p in projects_of[user] if not state.blocked(user, p)]
        if not open_projects:
            aside.append(user)
            continue
        project = min(open_projects, key=lambda p: (state.project_active[p], state.project_served.get(p, _NEVER),
                                                   groups[(user, p)], p))
        order.append(queues[(user, project)].popleft())
        if order[-1] == stop_at:
            break
        if not queues[(user, project)]:
            projects_of[user].remove(project)
        tick += 1
        state.serve(user, project, at=1e12 + tick)
        if projects_of[user]:
            heapq.heappush(heap, key(user))
    return order
