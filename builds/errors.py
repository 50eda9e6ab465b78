"""Why a build ended badly, split by whose fault it is.

Every error carries a stable ``code`` (stored on the job as ``errorCode``) and a one-line
message. ``UserError``s are the repository's or the request's fault and are never retried;
``TransientError``s are infrastructure failures and are retried with backoff.
"""

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
COPY_SOURCE_NOT_FOUND = "COPY_SOURCE_NOT_FOUND"  # COPY/ADD names a path the build context does not have
GIT_UNAVAILABLE = "GIT_UNAVAILABLE"              # git host unreachable (transient)
DISK_SPACE_LOW = "DISK_SPACE_LOW"                # a workspace would leave less than MIN_FREE_DISK free (transient)
BUILDKIT_UNAVAILABLE = "BUILDKIT_UNAVAILABLE"    # buildkitd unreachable (transient)
REGISTRY_UNAVAILABLE = "REGISTRY_UNAVAILABLE"    # push/pull failed for network reasons (transient)
SBOM_SCANNER_UNAVAILABLE = "SBOM_SCANNER_UNAVAILABLE"  # ATTEST_SBOM's scanner image cannot be pulled (transient)
DATABASE_UNAVAILABLE = "DATABASE_UNAVAILABLE"    # the database stayed locked or unreachable too long (transient)
WORKER_LOST = "WORKER_LOST"                      # the worker died; retries used up
SECRETS_UNREADABLE = "SECRETS_UNREADABLE"        # no key of SECRETS_KEY decrypts the job's secret values
INTERNAL_ERROR = "INTERNAL_ERROR"                # a bug of ours
# The codes of the error classes below, when a raise names no code of its own.
BUILD_FAILED = "BUILD_FAILED"                    # buildctl failed for a reason not told apart above
INFRASTRUCTURE_ERROR = "INFRASTRUCTURE_ERROR"    # a transient failure not told apart above
CANCELED = "CANCELED"                            # canceled by request
TIMEOUT = "TIMEOUT"                              # timeoutSeconds passed
LEASE_LOST = "LEASE_LOST"                        # never stored: the attempt stops without touching the job
SOURCE_AUTH_FAILED = "SOURCE_AUTH_FAILED"        # the git host refused the credentials (or asked for some)
GIT_FAILED = "GIT_FAILED"                        # git failed for a reason not told apart above


class BuildError(Exception):
    code = BUILD_FAILED
    retryable = False

    def __init__(self, message: str, *, code: str | None = None, step: str | None = None):
        super().__init__(message)
        self.step = step  # the Dockerfile step that failed, when known
        self.message = message.strip().splitlines()[0][:500] if message.strip() else self.code
        if code:
            self.code = code


class UserError(BuildError):
    """The request or the repository cannot be built as it is; retrying will not help."""

    code = BUILD_FAILED


class TransientError(BuildError):
    """Something we depend on (git host, buildkitd, registry) failed; a retry may succeed."""

    code = INFRASTRUCTURE_ERROR
    retryable = True


class BuildCanceled(BuildError):
    code = CANCELED


class BuildTimedOut(BuildError):
    code = TIMEOUT


class LeaseLost(BuildError):
    """Another worker (or the reaper) owns the job now; stop without touching the row."""

    code = LEASE_LOST


# What kind of failure each code is (the job's `failure.type`, README "Failure types"): where
# to look, for a person or a platform deciding what to show. Codes not listed are ours.
FAILURE_TYPES = {
    "source": (SOURCE_NOT_FOUND, SOURCE_REFUSED, SOURCE_TOO_LARGE, SOURCE_TIMEOUT, COMMIT_NOT_FOUND,
               WORKING_DIR_INVALID, GIT_UNAVAILABLE, SOURCE_AUTH_FAILED, GIT_FAILED),
    "dockerfile": (DOCKERFILE_NOT_FOUND, DOCKERFILE_INVALID, FRONTEND_NOT_ALLOWED, EGRESS_REFUSED,
                   UNSUPPORTED_RUNTIME, NOTHING_TO_BUILD, COMMAND_NOT_ALLOWED, INVALID_BUILD_CONFIG,
                   COPY_SOURCE_NOT_FOUND),
    "build_step": (BUILD_STEP_FAILED, BUILD_FAILED),
    "base_image": (BASE_IMAGE_NOT_FOUND,),
    "timeout": (TIMEOUT,),
    "canceled": (CANCELED, SUPERSEDED),
    "infrastructure": (DISK_SPACE_LOW, BUILDKIT_UNAVAILABLE, REGISTRY_UNAVAILABLE, SBOM_SCANNER_UNAVAILABLE,
                       DATABASE_UNAVAILABLE, WORKER_LOST, SECRETS_UNREADABLE, INTERNAL_ERROR,
                       INFRASTRUCTURE_ERROR),
}
_TYPE_OF = {code: kind for kind, codes in FAILURE_TYPES.items() for code in codes}
# Submitting the same job again may succeed with no change to the repository or the request:
# the cause was passing (a host or a service of ours was down) or a person's choice.
RETRYABLE_CODES = {GIT_UNAVAILABLE, DISK_SPACE_LOW, BUILDKIT_UNAVAILABLE, REGISTRY_UNAVAILABLE, DATABASE_UNAVAILABLE,
                   WORKER_LOST, INFRASTRUCTURE_ERROR, CANCELED, SUPERSEDED, SBOM_SCANNER_UNAVAILABLE}


def failure_type(code: str) -> str:
    """One of FAILURE_TYPES for an errorCode; anything unknown is ours: infrastructure."""
    return _TYPE_OF.get(code, "infrastructure")


def failure(*, status: str, code: str, step: str) -> dict | None:
    """The job's `failure` (API and callback): null unless it ended failed or canceled."""
    if status not in ("failed", "canceled"):
        return None
    code = code or (CANCELED if status == "canceled" else INTERNAL_ERROR)
    return {"type": failure_type(code), "step": step or None, "retryable": code in RETRYABLE_CODES}
