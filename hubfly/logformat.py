"""The service's own log lines: one line per event, with the job id on it where there is one,
and JSON lines when LOG_FORMAT=json.

The job id comes from, in order: `extra={"job_id": ...}` on the call, the `job_context()` the
code runs in (a build task sets it for everything it logs), or, for web access lines, the job
id in the request path. `logging_config()` is used by Django's settings and by gunicorn's
config, so the web server's own lines (start-up, access log) take the same shape.
"""

import logging
import re
import traceback
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import datetime, timezone

import pythonjsonlogger.core
import pythonjsonlogger.json

_current_job: ContextVar[str | None] = ContextVar("hubfly_job_id", default=None)
_JOB_PATH = re.compile(r"/jobs/([A-Za-z0-9._-]{1,128})(?:/|$|\?)")
# Attributes every LogRecord has; anything else on a record came from `extra=`.
_STANDARD = set(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "job_id", "color_message"}


@contextmanager
def job_context(job_id: str):
    """Everything logged inside (in this thread or task) carries `job_id`."""
    token = _current_job.set(job_id)
    try:
        yield
    finally:
        _current_job.reset(token)


def _access_fields(record: logging.LogRecord) -> dict:
    """uvicorn's access line: args (client, method, path, http version, status)."""
    if record.name in ("uvicorn.access", "gunicorn.access") and isinstance(record.args, tuple) and len(record.args) == 5:
        client, method, path, _version, status = record.args
        return {"client": client, "method": method, "path": path, "status": status}
    return {}


class JobIdFilter(logging.Filter):
    """Puts `job_id` on every record (None when there is no job), for both formatters."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not getattr(record, "job_id", None):
            job_id = _current_job.get()
            path = _access_fields(record).get("path") or getattr(getattr(record, "request", None), "path", None)
            if job_id is None and path:
                match = _JOB_PATH.search(str(path))
                job_id = match[1] if match else None
            record.job_id = job_id
        return True


def _timestamp(record: logging.LogRecord) -> str:
    moment = datetime.fromtimestamp(record.created, timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def _one_line(text: str) -> str:
    return text.replace("\r", "\\r").replace("\n", "\\n")


class PlainFormatter(logging.Formatter):
    """`<time> <LEVEL> <logger> <message> [job=<id>]`, always on one line."""

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        if record.exc_info:
            message += "\n" + "".join(traceback.format_exception(*record.exc_info)).rstrip()
        job_id = getattr(record, "job_id", None)
        suffix = f" job={job_id}" if job_id else ""
        return f"{_timestamp(record)} {record.levelname} {record.name} {_one_line(message)}{suffix}"


class JsonFormatter(pythonjsonlogger.json.JsonFormatter):
    """One JSON object per line (python-json-logger): time, level, logger, message, job_id, pid,
    any `extra=` fields, the fields of an access line, and the traceback as one string."""

    def __init__(self, *args, **kwargs):
        super().__init__(
            "{levelname}{name}{message}{job_id}{process}", style="{",
            rename_fields={"levelname": "level", "name": "logger", "process": "pid", "exc_info": "exception"},
            reserved_attrs=[*pythonjsonlogger.core.RESERVED_ATTRS, "color_message"],
            json_default=str, json_ensure_ascii=False,
        )

    def add_fields(self, log_data: dict, record: logging.LogRecord, message_dict: dict) -> None:
        log_data["time"] = _timestamp(record)
        super().add_fields(log_data, record, message_dict)
        for key, value in _access_fields(record).items():
            log_data.setdefault(key, value)


def logging_config(log_format: str = "plain", level: str = "INFO") -> dict:
    """A dictConfig for every process: root, Django, Celery, gunicorn and uvicorn go to one
    stream handler with the chosen formatter."""
    if log_format not in ("plain", "json"):
        raise ValueError(f"LOG_FORMAT must be plain or json, not {log_format!r}")
    formatter = {"()": f"hubfly.logformat.{'Json' if log_format == 'json' else 'Plain'}Formatter"}
    server_logger = {"handlers": ["console"], "level": "INFO", "propagate": False}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"job_id": {"()": "hubfly.logformat.JobIdFilter"}},
        "formatters": {"default": formatter},
        "handlers": {
            "console": {"class": "logging.StreamHandler", "formatter": "default", "filters": ["job_id"],
                        "stream": "ext://sys.stderr"},
        },
        "root": {"handlers": ["console"], "level": level.upper()},
        "loggers": {
            "django.db.backends": {"level": "WARNING"},
            "py.warnings": server_logger,
            "gunicorn.error": server_logger,
            "gunicorn.access": server_logger,
            "uvicorn.error": server_logger,
            "uvicorn.access": server_logger,
        },
    }


class QuietPeriodicTasks(logging.Filter):
    """Drops Celery's INFO lines about periodic tasks that found nothing to do: beat sending
    them, a worker receiving them, and their success when the result counts nothing. Every
    few seconds they would bury the lines that say something; a run that did something, and
    any warning or error, is still logged."""

    def __init__(self, task_names):
        super().__init__()
        self.task_names = task_names  # a callable: the schedule is read when settings are

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno > logging.INFO:
            return True
        names = self.task_names()
        if record.name == "celery.beat":
            args = record.args if isinstance(record.args, tuple) else ()
            return not (str(record.msg).startswith("Scheduler: Sending due task") and len(args) > 1 and args[1] in names)
        context = record.args if isinstance(record.args, dict) else {}
        if context.get("name") not in names:
            return True
        if record.name == "celery.worker.strategy":
            return False  # "received": whether it does anything is known when it succeeds
        if record.name == "celery.app.trace" and "succeeded" in str(record.msg):
            return _counts_something(str(context.get("return_value", "")))
        return True


def _counts_something(result: str) -> bool:
    """A task's result as Celery shows it (repr): 0, None, False or counts that are all 0 say
    nothing was done."""
    return bool(re.search(r"[1-9]|True", re.sub(r"'[^']*'", "", result)))
