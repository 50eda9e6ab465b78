"""Settings for hubfly-builder, read from environment variables only.

Defaults run everything on one machine (SQLite database, SQLite broker, local directories).
Scaling out is a change of DATABASE_URL and CELERY_BROKER_URL, nothing else.
"""

import secrets
import socket
from base64 import urlsafe_b64decode
from pathlib import Path

import dj_database_url

from .env import ConfigError, env_bool, env_bytes, env_float, env_int, env_list, env_passed, env_str, sqlite_path
from .logformat import logging_config

BASE_DIR = Path(__file__).resolve().parent.parent

DATA_DIR = Path(env_str("DATA_DIR", "./data")).resolve()
LOG_DIR = Path(env_str("LOG_DIR", "./log")).resolve()
DATA_DIR.mkdir(parents=True, exist_ok=True)
LOG_DIR.mkdir(parents=True, exist_ok=True)


def _persistent_secret(name: str, nbytes: int = 32) -> str:
    """A random value created once and kept in DATA_DIR, so restarts keep it."""
    path = DATA_DIR / name
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        value = secrets.token_urlsafe(nbytes)
        try:
            with open(path, "x", opener=lambda p, f: __import__("os").open(p, f, 0o600)) as fh:
                fh.write(value + "\n")
        except FileExistsError:  # another process won the race; use its value
            return path.read_text().strip()
        return value


SECRET_KEY = env_str("DJANGO_SECRET_KEY") or _persistent_secret("django-secret-key")


def _secrets_keys() -> list[str]:
    """SECRETS_KEY: keys of the jobs' secret values at rest (builds.services.jobs), each 32
    random bytes in URL-safe base64. The first encrypts; the others still decrypt (rotation)."""
    keys = env_list("SECRETS_KEY") or [_persistent_secret("secrets-key")]
    for number, key in enumerate(keys, 1):
        try:
            valid = len(urlsafe_b64decode(key + "=" * (-len(key) % 4))) == 32
        except ValueError:
            valid = False
        if not valid or not key.rstrip("=").replace("-", "").replace("_", "").isalnum():
            raise ConfigError(f"SECRETS_KEY: key {number} is not 32 bytes in URL-safe base64 "
                              "(python -c 'import secrets; print(secrets.token_urlsafe(32))')")
    return keys


SECRETS_KEYS = _secrets_keys()
DEBUG = env_bool("DJANGO_DEBUG", False)
ALLOWED_HOSTS = env_list("ALLOWED_HOSTS") or ["*"]
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS")

INSTALLED_APPS = [
    # The admin's modules are loaded by hubfly/urls.py, in the web process only: a worker that
    # imported them would carry the API's views and DRF (~18 MB a process) for nothing.
    "django.contrib.admin.apps.SimpleAdminConfig",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "builds",
]

MIDDLEWARE = [
    "builds.api.middleware.BodySizeLimitMiddleware",
    "builds.api.middleware.DatabaseOutageMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "hubfly.urls"
WSGI_APPLICATION = "hubfly.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# Database: SQLite in DATA_DIR unless DATABASE_URL says otherwise. On SQLite, IMMEDIATE
# transactions + WAL + a generous busy timeout keep several writers (web, workers, beat)
# from failing with "database is locked": a DEFERRED transaction that reads, then writes, fails
# at once when another writer holds the lock, whatever the busy timeout.
DATABASE_URL = env_str("DATABASE_URL")
if DATABASE_URL:
    DATABASES = {"default": dj_database_url.parse(DATABASE_URL, conn_max_age=60, conn_health_checks=True)}
else:
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": str(DATA_DIR / "hubfly.sqlite3"),
        }
    }
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    DATABASES["default"].setdefault("OPTIONS", {}).update(
        {
            "transaction_mode": "IMMEDIATE",
            "timeout": 30,
            "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL",
        }
    )
    # Opening a SQLite connection costs about as much as a job read: threads keep theirs.
    DATABASES["default"]["CONN_MAX_AGE"] = 600
    DATABASES["default"]["CONN_HEALTH_CHECKS"] = True
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = False
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = DATA_DIR / "static"
STATIC_ROOT.mkdir(exist_ok=True)
WHITENOISE_USE_FINDERS = True
WHITENOISE_AUTOREFRESH = False

# Threads of a web process that run the JSON API and the admin (hubfly/asgi.py); log streams
# do not take one.
WEB_THREADS = env_int("WEB_THREADS", 8, minimum=1, maximum=256)
# How long an API request waits out a database outage (a PostgreSQL restart or failover, a
# dropped connection, a locked SQLite file) before it answers 503 with Retry-After; 0 answers at
# once. A full disk under the database answers 503 at once: it does not pass in seconds.
API_DATABASE_WAIT_SECONDS = env_float("API_DATABASE_WAIT_SECONDS", 10.0, minimum=0.0)
# GET of a job and of the job list answered without Django's middleware and DRF
# (builds.api.reads); off only to measure the difference (bench/apiwrk.py).
API_LEAN_READS = env_bool("API_LEAN_READS", True)
# POST /api/v1/jobs validated in the event loop and stored by group commit (builds.api.creations);
# off only to measure the difference (bench/apiwrk.py).
API_LEAN_CREATIONS = env_bool("API_LEAN_CREATIONS", True)
# Celery's lines about periodic tasks that found nothing to do (hubfly.logformat.QuietPeriodicTasks).
LOG_IDLE_PERIODIC_TASKS = env_bool("LOG_IDLE_PERIODIC_TASKS", False)
# Live log followers one web process serves at once (more get 429); they share one reader per
# job and hold no thread or database connection each (builds.joblog.reader).
MAX_LOG_FOLLOWERS = env_int("MAX_LOG_FOLLOWERS", 500, minimum=1)
# /readyz and /metrics answer from values refreshed at most this often, in the background.
PROBE_REFRESH_SECONDS = env_float("PROBE_REFRESH_SECONDS", 5.0, minimum=0.1)
# False where a process never builds and has no buildkitd socket (the compose web service):
# its /readyz then leaves out the buildkitd and buildNetwork checks, which the workers' own
# healthchecks make instead.
PROBE_BUILDKIT = env_bool("PROBE_BUILDKIT", True)

# Request bodies above 1 MiB are refused with 413 (builds.api.middleware).
DATA_UPLOAD_MAX_MEMORY_SIZE = 1024 * 1024
MAX_REQUEST_BODY_BYTES = DATA_UPLOAD_MAX_MEMORY_SIZE

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": ["builds.api.auth.BearerTokenAuthentication"],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_PARSER_CLASSES": ["builds.api.middleware.JSONParser"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "EXCEPTION_HANDLER": "builds.api.errors.exception_handler",
    "UNAUTHENTICATED_USER": None,
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
}

# OpenAPI schema at /api/schema/ and docs at /api/docs/ (builds.api.schema). Both are public:
# they describe the API and hold no data. The docs page's assets come from the sidecar package,
# so it works without internet access.
SPECTACULAR_SETTINGS = {
    "TITLE": "hubfly-builder API",
    "DESCRIPTION": "Builds container images from git repositories with BuildKit.",
    "VERSION": "1.0.0",
    # 3.1: nullable objects are `oneOf: [ref, null]`, which validators read as meant (3.0's
    # `nullable` next to a $ref is ambiguous, and validators reject null there).
    "OAS_VERSION": "3.1.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "SERVE_PERMISSIONS": ["rest_framework.permissions.AllowAny"],
    "SERVE_AUTHENTICATION": [],
    "COMPONENT_SPLIT_REQUEST": True,
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "POSTPROCESSING_HOOKS": [
        "drf_spectacular.hooks.postprocess_schema_enums",
        "builds.api.schema.add_plain_django_endpoints",
    ],
    # The outcome webhook the service POSTs (its body is the JobOutcome component).
    "WEBHOOKS": ["builds.api.schema.job_outcome_webhook"],
}

# --- The build service ---------------------------------------------------------------------

PORT = env_int("PORT", 8080, minimum=1, maximum=65535)
REGISTRY_URL = env_str("REGISTRY_URL", "localhost:5000").rstrip("/")
if "://" in REGISTRY_URL:
    raise ConfigError(f"REGISTRY_URL is a host[:port], without a scheme; got {REGISTRY_URL!r}")
REGISTRY_INSECURE = env_bool("REGISTRY_INSECURE", False)
# Credentials the builder pushes (and pulls) with. Without them, a local registry started by
# infra.localservices generated a pair into DATA_DIR; an operator's own docker config file is
# used as it is (DOCKER_CONFIG, a directory holding config.json).
REGISTRY_USERNAME = env_str("REGISTRY_USERNAME")
REGISTRY_PASSWORD = env_str("REGISTRY_PASSWORD")
if bool(REGISTRY_USERNAME) != bool(REGISTRY_PASSWORD):
    raise ConfigError("REGISTRY_USERNAME and REGISTRY_PASSWORD must be set together")
if not REGISTRY_USERNAME and (DATA_DIR / "registry-credentials").exists():
    REGISTRY_USERNAME, _, REGISTRY_PASSWORD = (DATA_DIR / "registry-credentials").read_text().strip().partition(":")
# The operator's docker config directory (its config.json), read for registry credentials when
# REGISTRY_USERNAME is not set.
DOCKER_CONFIG = Path(env_str("DOCKER_CONFIG") or Path.home() / ".docker")
# The network of RUN steps (infra.buildnet): "bridge" (a namespace of its own per step, public
# egress only) or "none" (no egress at all, for every build). BUILD_EGRESS_ALLOW opens
# exceptions: CIDRs, addresses or host:port, comma-separated.
BUILD_NETWORK = env_str("BUILD_NETWORK", "bridge").lower()
if BUILD_NETWORK not in ("bridge", "none"):
    raise ConfigError(f"BUILD_NETWORK must be bridge or none; got {BUILD_NETWORK!r}")
try:
    from infra.buildnet import NetworkError as _NetworkError, parse_allow as _parse_allow

    BUILD_EGRESS_ALLOW = _parse_allow(env_str("BUILD_EGRESS_ALLOW"))
except _NetworkError as exc:
    raise ConfigError(str(exc)) from None
BUILDKIT_ADDR = env_str("BUILDKIT_ADDR", "unix:///run/buildkit/buildkitd.sock")
BUILDCTL_BIN = env_str("BUILDCTL_BIN", "buildctl")
GIT_BIN = env_str("GIT_BIN", "git")
# What git and buildctl get of the service's own environment, as it is (each takes the names it
# needs, builds/services/steps/fetch.py and buildkit.py; nothing else of it reaches them).
INHERITED_ENV = env_passed(
    "PATH", "HOME", "SSL_CERT_FILE", "SSL_CERT_DIR", "GIT_SSL_CAINFO", "DOCKER_CONFIG", "BUILDKIT_HOST",
    "http_proxy", "https_proxy", "no_proxy", "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY",
)
CALLBACK_URL = env_str("CALLBACK_URL")
CALLBACK_SECRET = env_str("CALLBACK_SECRET")
CALLBACK_TIMEOUT_SECONDS = env_float("CALLBACK_TIMEOUT_SECONDS", 5.0, minimum=0.1)
CALLBACK_MAX_AGE_HOURS = env_int("CALLBACK_MAX_AGE_HOURS", 24, minimum=1)
# Failed deliveries are retried after CALLBACK_BACKOFF_SECONDS, doubling up to the maximum;
# beat looks for due deliveries every CALLBACK_FLUSH_SECONDS.
CALLBACK_BACKOFF_SECONDS = env_float("CALLBACK_BACKOFF_SECONDS", 5.0, minimum=0.1)
CALLBACK_BACKOFF_MAX_SECONDS = env_float("CALLBACK_BACKOFF_MAX_SECONDS", 1800.0, minimum=0.1)
CALLBACK_FLUSH_SECONDS = env_float("CALLBACK_FLUSH_SECONDS", 10.0, minimum=0.1)
# A job's own callbackUrl must resolve to public addresses unless listed here (hosts, host:port
# or networks, as GIT_ALLOWED_HOSTS); CALLBACK_URL is the operator's and is not checked.
CALLBACK_ALLOWED_HOSTS = [h.lower() for h in env_list("CALLBACK_ALLOWED_HOSTS")]
MAX_CONCURRENT_BUILDS = env_int("MAX_CONCURRENT_BUILDS", 3, minimum=1, maximum=64)
MAX_RETRIES = env_int("MAX_RETRIES", 3, minimum=0, maximum=20)
# Builds one user / one project may run at once across all workers (0: no limit); overrides per
# user or project in LIMITS_FILE and in the admin (builds.services.state.queue).
MAX_BUILDS_PER_USER = env_int("MAX_BUILDS_PER_USER", 0, minimum=0)
MAX_BUILDS_PER_PROJECT = env_int("MAX_BUILDS_PER_PROJECT", 0, minimum=0)
LIMITS_FILE = Path(env_str("LIMITS_FILE", str(BASE_DIR / "configs/limits.json")))
# Attestations pushed with every image (a job may opt out with buildConfig.attestations: false):
# SLSA provenance from BuildKit (max: with the build's steps and materials; min; off) and an SBOM
# made by a scanner image that speaks BuildKit's SBOM protocol ("" is BuildKit's own default).
ATTEST_PROVENANCE = env_str("ATTEST_PROVENANCE", "max").lower()
if ATTEST_PROVENANCE not in ("max", "min", "off"):
    raise ConfigError(f"ATTEST_PROVENANCE must be max, min or off; got {ATTEST_PROVENANCE!r}")
ATTEST_SBOM = env_bool("ATTEST_SBOM", True)
SBOM_SCANNER_IMAGE = env_str("SBOM_SCANNER_IMAGE", "")
# What a job does to older jobs of its projectId + ref + workingDir when its buildConfig says
# nothing: "false", "true" (cancel the pending ones) or "running" (also the one building).
SUPERSEDE_DEFAULT = env_str("SUPERSEDE_DEFAULT", "false").lower()
if SUPERSEDE_DEFAULT not in ("false", "true", "running"):
    raise ConfigError(f"SUPERSEDE_DEFAULT must be false, true or running; got {SUPERSEDE_DEFAULT!r}")
RETRY_BACKOFF_SECONDS = env_float("RETRY_BACKOFF_SECONDS", 10.0, minimum=0.0)
RETRY_BACKOFF_MAX_SECONDS = env_float("RETRY_BACKOFF_MAX_SECONDS", 600.0, minimum=0.0)
DEFAULT_TIMEOUT_SECONDS = env_int("DEFAULT_TIMEOUT_SECONDS", 900, minimum=1)
MAX_TIMEOUT_SECONDS = env_int("MAX_TIMEOUT_SECONDS", 4 * 3600, minimum=1)
LOG_RETENTION_DAYS = env_int("LOG_RETENTION_DAYS", 7, minimum=1)
LOG_MAX_BYTES = env_int("LOG_MAX_BYTES", 20 * 1024 * 1024, minimum=64 * 1024)
GIT_ALLOWED_HOSTS = [h.lower() for h in env_list("GIT_ALLOWED_HOSTS")]
GIT_TIMEOUT_SECONDS = env_int("GIT_TIMEOUT_SECONDS", 300, minimum=1)
# A fetch (pack and checkout) may write GIT_MAX_BYTES; a job starts only if the disk keeps
# MIN_FREE_DISK free with that much written.
GIT_MAX_BYTES = env_bytes("GIT_MAX_BYTES", 2 * 1024**3, minimum=1024**2)
MIN_FREE_DISK = env_bytes("MIN_FREE_DISK", 1024**3)
ALLOWED_COMMANDS_FILE = Path(env_str("ALLOWED_COMMANDS_FILE") or BASE_DIR / "configs/allowed-commands.json")
RUNTIMES_FILE = Path(env_str("RUNTIMES_FILE") or BASE_DIR / "configs/runtimes.json")
WORKSPACE_DIR = Path(env_str("WORKSPACE_DIR", str(DATA_DIR / "workspaces"))).resolve()
# Every worker removes the orphaned workspaces of its host at start and this often.
WORKSPACE_PRUNE_INTERVAL_SECONDS = env_float("WORKSPACE_PRUNE_INTERVAL_SECONDS", 600.0, minimum=1.0)
# The key of each project's cache-mount namespace; every build host must have the same one.
CACHE_NAMESPACE_SECRET = env_str("CACHE_NAMESPACE_SECRET") or _persistent_secret("cache-namespace-secret")
# Images a Dockerfile's `# syntax=` line may name (repositories; any tag or digest).
BUILD_FRONTEND_ALLOW = env_list("BUILD_FRONTEND_ALLOW") or ["docker/dockerfile"]
# A running build renews its lease every HEARTBEAT_SECONDS; the reaper takes a job back once
# its lease is LEASE_SECONDS old.
HEARTBEAT_SECONDS = env_float("HEARTBEAT_SECONDS", 3.0, minimum=0.2)
LEASE_SECONDS = env_float("LEASE_SECONDS", 30.0, minimum=1.0)
REAPER_INTERVAL_SECONDS = env_float("REAPER_INTERVAL_SECONDS", 15.0, minimum=1.0)
# A pending job whose queue message has not been taken this long is published again.
REQUEUE_AFTER_SECONDS = env_float("REQUEUE_AFTER_SECONDS", 120.0, minimum=1.0)
CANCEL_GRACE_SECONDS = env_float("CANCEL_GRACE_SECONDS", 5.0, minimum=0.1)
WORKER_NAME = env_str("WORKER_NAME", socket.gethostname())

API_TOKENS = env_list("BUILDER_API_TOKENS") or [_persistent_secret("api-token")]
API_TOKEN_GENERATED = not env_list("BUILDER_API_TOKENS")

# --- Celery ----------------------------------------------------------------------------------

# Empty is unset, as for DATABASE_URL (docker-compose.yml passes both through, empty by default).
CELERY_BROKER_URL = env_str("CELERY_BROKER_URL") or f"sqla+sqlite:///{DATA_DIR / 'broker.sqlite3'}"
BROKER_IS_SQLA = CELERY_BROKER_URL.startswith(("sqla+", "sqlalchemy+"))
# The SQLAlchemy URL behind a sqla+ broker URL, and the SQLite file when it is one.
BROKER_SQLALCHEMY_URL = CELERY_BROKER_URL.split("+", 1)[1] if BROKER_IS_SQLA else ""
BROKER_SQLITE_PATH = sqlite_path(BROKER_SQLALCHEMY_URL) if BROKER_IS_SQLA else None
# A SQLite broker wakes its workers through a doorbell (hubfly/broker.py): polling is only its
# safety net. Other SQLAlchemy databases rely on polling alone.
BROKER_POLL_SECONDS = env_float("BROKER_POLL_SECONDS", 1.0 if BROKER_SQLITE_PATH else 0.1, minimum=0.01)
# Longest a message may stay unacknowledged before the broker hands it to another worker (Redis's
# visibility_timeout, RabbitMQ's consumer timeout): above any build.
BROKER_UNACKED_SECONDS = MAX_TIMEOUT_SECONDS + 3600
if BROKER_IS_SQLA:
    # kombu's SQLAlchemy transport with the doorbell; it takes the plain SQLAlchemy URL.
    CELERY_BROKER_TRANSPORT = "hubfly.broker:Transport"
    CELERY_BROKER_URL = BROKER_SQLALCHEMY_URL
    # A 60 s busy timeout: a briefly locked broker file must not look like a lost connection,
    # which would restore (and duplicate) running builds.
    CELERY_BROKER_TRANSPORT_OPTIONS = {"connect_args": {"timeout": 60}}
elif CELERY_BROKER_URL.startswith(("redis://", "rediss://")):
    CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": BROKER_UNACKED_SECONDS}
else:
    CELERY_BROKER_TRANSPORT_OPTIONS = {}
if CELERY_BROKER_URL.startswith(("amqp://", "amqps://", "pyamqp://")):
    # RabbitMQ closes a channel whose delivery stays unacknowledged past consumer_timeout (30 min
    # by default); builds are acknowledged when they end. RabbitMQ 3.11.15 and 3.12+ honour this
    # per-queue argument; older ones (Debian 12's 3.10) ignore it and need consumer_timeout in
    # rabbitmq.conf (see README).
    from kombu import Queue

    CELERY_TASK_QUEUES = (
        Queue("builds", queue_arguments={"x-consumer-timeout": BROKER_UNACKED_SECONDS * 1000}),
        Queue("maintenance"),
    )
CELERY_TASK_ACKS_LATE = True
# A lost broker connection leaves running builds alone (Celery 6 will cancel them by default):
# the build keeps its lease in the database, and its message, redelivered, finds the job taken
# and does nothing. Cancelling would throw the build away and make it again.
CELERY_WORKER_CANCEL_LONG_RUNNING_TASKS_ON_CONNECTION_LOSS = False
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_IGNORE_RESULT = True
CELERY_WORKER_ENABLE_REMOTE_CONTROL = not BROKER_IS_SQLA
CELERY_WORKER_CONCURRENCY = MAX_CONCURRENT_BUILDS
CELERY_WORKER_HIJACK_ROOT_LOGGER = False
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_TASK_DEFAULT_QUEUE = "builds"
# Periodic work (reaper, webhook outbox, clean-up) has its own queue and one-slot worker: it
# never takes a build slot, and is never stuck behind long builds.
CELERY_TASK_ROUTES = {
    "builds.tasks.deliver_callback": {"queue": "maintenance"},
    "builds.tasks.deliver_callbacks": {"queue": "maintenance"},
    "builds.tasks.reap_jobs": {"queue": "maintenance"},
    "builds.tasks.prune": {"queue": "maintenance"},
}
CELERY_BEAT_SCHEDULE_FILENAME = str(DATA_DIR / "celerybeat-schedule")
CELERY_BEAT_SCHEDULE = {
    "reap-jobs": {"task": "builds.tasks.reap_jobs", "schedule": REAPER_INTERVAL_SECONDS},
    "deliver-callbacks": {"task": "builds.tasks.deliver_callbacks", "schedule": CALLBACK_FLUSH_SECONDS},
    "prune": {"task": "builds.tasks.prune", "schedule": 3600.0},
}

# One line per event with the job id where there is one; JSON lines with LOG_FORMAT=json.
LOG_FORMAT = env_str("LOG_FORMAT", "plain").lower()
if LOG_FORMAT not in ("plain", "json"):
    raise ConfigError(f"LOG_FORMAT must be plain or json; got {LOG_FORMAT!r}")
LOGGING = logging_config(LOG_FORMAT, env_str("LOG_LEVEL", "INFO"))
