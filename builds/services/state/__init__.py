"""A job's state: every status write (lifecycle, the one writer of `status`), the fair queue
that picks which job a free slot starts (queue), the reaper that takes back jobs whose worker
is gone (reaper), and the Celery messages that wake workers (dispatch)."""
