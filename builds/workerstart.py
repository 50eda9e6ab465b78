"""What a Celery worker does when it starts (hooks on Celery's worker_process_init and
worker_ready, loaded by builds/apps.py): pool processes die with their worker, the broker
connection is warmed up, and the jobs and workspaces of this host's dead workers are taken back
and removed."""

import logging
import os
import select
import threading
import time

from celery.signals import worker_process_init, worker_ready
from django.conf import settings
from django.db import connection

from builds.services import process
from builds.services.operations import housekeeping
from builds.services.state import dispatch, reaper

log = logging.getLogger(__name__)


def _watch_parent(parent: int) -> None:
    # A pidfd becomes readable when the process exits: the thread sleeps until then instead of
    # waking to poll (Linux 5.3+; polling elsewhere).
    try:
        pidfd = os.pidfd_open(parent)
    except (AttributeError, OSError):
        pidfd = None
    if pidfd is not None and os.getppid() == parent:
        select.select([pidfd], [], [])
    while os.getppid() == parent:
        time.sleep(0.5)
    process.kill_all_groups()
    os._exit(1)


@worker_process_init.connect
def _die_with_worker(**_):
    # A pool process stops its builds and exits when the worker's main process is gone (say,
    # SIGKILLed), so nothing keeps building a job that the reaper hands to another worker.
    # Celery sets PR_SET_PDEATHSIG=SIGKILL on pool processes for this, but that signal fires
    # when the parent *thread* that forked the process exits: billiard forks replacement
    # processes from its worker-handler thread, which stops at shutdown, so a warm shutdown
    # SIGKILLed healthy builds running in replaced processes. We clear it and watch instead.
    process.set_parent_death_signal(0)
    threading.Thread(target=_watch_parent, args=(os.getppid(),), name="parent-watch", daemon=True).start()
    # Pool processes publish the callback task when a build ends. In a thread: a pool process
    # that is not up within a few seconds is replaced, and a broker may be slow to answer.
    threading.Thread(target=dispatch.warm_up, name="broker-warm-up", daemon=True).start()


@worker_ready.connect
def _warm_up_broker(**_):
    # A threads pool (the Procfile's) publishes callbacks from this process, which no
    # worker_process_init reaches.
    threading.Thread(target=dispatch.warm_up, name="broker-warm-up", daemon=True).start()


@worker_ready.connect
def _take_back_jobs_of_dead_local_workers(**_):
    taken = reaper.reap_dead_local_workers()
    if taken:
        log.info("took back %d job(s) of worker processes that died on this host", taken)


@worker_ready.connect
def _prune_this_hosts_workspaces(**_):
    # Workspaces live on each build host's disk: the maintenance worker's hourly prune sees
    # only its own. A worker removes those of attempts that died on this host (say, SIGKILLed
    # with their worker), at start and then periodically, in a thread of the main process.
    threading.Thread(target=_prune_workspaces_forever, name="workspace-prune", daemon=True).start()


def _prune_workspaces_forever() -> None:
    while True:
        try:
            removed = housekeeping.prune_workspaces()
            if removed:
                log.info("removed %d orphaned workspace(s) of this host", removed)
        except Exception:
            log.exception("could not prune this host's workspaces; trying again later")
        finally:
            connection.close()  # this thread's own; not held while it sleeps
        time.sleep(settings.WORKSPACE_PRUNE_INTERVAL_SECONDS)
