"""Why a build ended badly, split by whose fault it is.

Every error carries a stable ``code`` (stored on the job as ``errorCode``) and a one-line
message. ``UserError``s are the repository's or the request's fault and are never retried;
``TransientError``s are infrastructure failures and are retried with backoff.
"""


class BuildError(Exception):
    code = "BUILD_FAILED"
    retryable = False

    def __init__(self, message: str, *, code: str | None = None):
        super().__init__(message)
        self.message = message.strip().splitlines()[0][:500] if message.strip() else self.code
        if code:
            self.code = code


class UserError(BuildError):
    """The request or the repository cannot be built as it is; retrying will not help."""

    code = "BUILD_FAILED"


class TransientError(BuildError):
    """Something we depend on (git host, buildkitd, registry) failed; a retry may succeed."""

    code = "INFRASTRUCTURE_ERROR"
    retryable = True


class BuildCanceled(BuildError):
    code = "CANCELED"


class BuildTimedOut(BuildError):
    code = "TIMEOUT"


class LeaseLost(BuildError):
    """Another worker (or the reaper) owns the job now; stop without touching the row."""

    code = "LEASE_LOST"


# Stable codes, grouped for reference. Detection and generation use the user codes.
SOURCE_NOT_FOUND = "SOURCE_NOT_FOUND"            # repository or ref does not exist
SOURCE_REFUSED = "SOURCE_REFUSED"                # the source rules refuse the host, an address or a redirect
SOURCE_TOO_LARGE = "SOURCE_TOO_LARGE"            # the fetch or checkout would write more than GIT_MAX_BYTES
SOURCE_TIMEOUT = "SOURCE_TIMEOUT"                # the fetch took longer than GIT_TIMEOUT_SECONDS
COMMIT_NOT_FOUND = "COMMIT_NOT_FOUND"            # commitSha unknown to the repository
WORKING_DIR_INVALID = "WORKING_DIR_INVALID"      # workingDir/buildContextDir missing or escaping
DOCKERFILE_NOT_FOUND = "DOCKERFILE_NOT_FOUND"    # no Dockerfile and nothing to generate
DOCKERFILE_INVALID = "DOCKERFILE_INVALID"        # Dockerfile unreadable, symlink out, too big, parse error
FRONTEND_NOT_ALLOWED = "FRONTEND_NOT_ALLOWED"    # a `# syntax=` line names an image not in BUILD_FRONTEND_ALLOW
SUPERSEDED = "SUPERSEDED"                        # canceled: a newer job of its projectId + ref + workingDir
EGRESS_REFUSED = "EGRESS_REFUSED"                # ADD <url> or an image from a host builds may not reach
UNSUPPORTED_RUNTIME = "UNSUPPORTED_RUNTIME"      # runtime/version not in runtimes.json
NOTHING_TO_BUILD = "NOTHING_TO_BUILD"            # detection found nothing buildable
COMMAND_NOT_ALLOWED = "COMMAND_NOT_ALLOWED"      # a command the allowlist refuses
INVALID_BUILD_CONFIG = "INVALID_BUILD_CONFIG"    # buildConfig values the generator cannot use
BUILD_STEP_FAILED = "BUILD_STEP_FAILED"          # a RUN step exited non-zero
BASE_IMAGE_NOT_FOUND = "BASE_IMAGE_NOT_FOUND"    # FROM image does not exist
GIT_UNAVAILABLE = "GIT_UNAVAILABLE"              # git host unreachable (transient)
DISK_SPACE_LOW = "DISK_SPACE_LOW"                # a workspace would leave less than MIN_FREE_DISK free (transient)
BUILDKIT_UNAVAILABLE = "BUILDKIT_UNAVAILABLE"    # buildkitd unreachable (transient)
REGISTRY_UNAVAILABLE = "REGISTRY_UNAVAILABLE"    # push/pull failed for network reasons (transient)
DATABASE_UNAVAILABLE = "DATABASE_UNAVAILABLE"    # the database stayed locked or unreachable too long (transient)
WORKER_LOST = "WORKER_LOST"                      # the worker died; retries used up
