"""Worker start-up hooks."""

import ctypes
import logging
import signal

from celery.signals import worker_process_init, worker_ready

log = logging.getLogger(__name__)


@worker_process_init.connect
def _die_with_worker(**_):
    # A pool process dies with the worker's main process, and its buildctl dies with it
    # (process.py), so a SIGKILLed worker leaves no build running that the reaper will
    # hand to another worker.
    try:
        ctypes.CDLL(None).prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


@worker_ready.connect
def _take_back_jobs_of_dead_local_workers(**_):
    from builds.services import reaper

    taken = reaper.reap_dead_local_workers()
    if taken:
        log.info("took back %d job(s) of worker processes that died on this host", taken)
