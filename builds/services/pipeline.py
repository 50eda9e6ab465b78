"""One attempt at building a job, as named steps: claim, fetch, prepare, build and push (by
digest), tag (fenced by the lease), finish.

Errors are caught here and nowhere else in the worker: user errors fail the job, transient
ones hand it back to the queue (until MAX_RETRIES), cancel and timeout end it (the timeout is
one deadline for the whole job, from its first start, whatever the retries), and a lost lease
means another worker owns the job now, so this one leaves the row alone. The workspace is
removed whatever happened.
"""

import errno
import json
import logging
import os
import shutil
import time
import traceback
import uuid
from dataclasses import dataclass
from pathlib import Path

from django.conf import settings
from django.db import DatabaseError

from builds import errors
from builds.buildsettings import BuildSettings
from builds.dockerfile import lockfile
from builds.errors import BuildCanceled, BuildError, BuildTimedOut, LeaseLost
from builds.joblog import masking, writer
from builds.models import Job, Status
from builds.services import jobs, process
from builds.services.operations import dbfaults
from builds.services.state import lifecycle, queue
from builds.services.steps import buildkit, dockerfile_choice, egress, fetch, naming, registry
from hubfly.logformat import job_context

log = logging.getLogger(__name__)
MAX_WARNINGS = 20


def worker_id() -> str:
    return f"{settings.WORKER_NAME}:{os.getpid()}"


@dataclass
class Outcome:
    retry_in: float | None = None  # seconds until the next attempt, when the job was handed back
    claimed: bool = True  # False: no job could start, nothing was attempted


class BuildDirector:
    def __init__(self, job: Job, lease: uuid.UUID, secrets: dict[str, str] | None = None):
        self.job = job
        self.lease = lease
        self.build_settings = BuildSettings.of(job.build_config)
        self.secrets = jobs.job_secrets(job) if secrets is None else secrets
        self.build_args = self.build_settings.build_args
        self.masker = masking.Masker(self.secrets.values())
        self.log = writer.LogWriter(job.id, self.masker)
        # One deadline for the whole job, counted from its first start: run() moves the
        # deadline back by the time earlier attempts (and the waits between them) took.
        self.timeout = self.build_settings.timeout_seconds
        self.guard = process.Guard(
            deadline=time.monotonic() + self.timeout,
            heartbeat=self._heartbeat,
            is_canceled=lambda: lifecycle.cancel_requested(job.id),
            interval=settings.HEARTBEAT_SECONDS,
        )
        self.workspace = settings.WORKSPACE_DIR / naming.workspace_name(job.id, lease.hex)
        self.tracker = buildkit.ProgressTracker()
        # What the job shows of this attempt (job JSON `image`, `steps`, `cache`, phase times).
        self.report: dict = {"phases": {}}
        self.warnings: list[str] = []  # this attempt's; stored on the job when it ends
        self._last_progress = None
        self._renewed_at = time.monotonic()
        # Without a renewal for this long, stop: the reaper may take the job LEASE_SECONDS after
        # the last renewal, and this attempt's buildctl must be gone by then.
        self._give_up_after = max(settings.LEASE_SECONDS - 2 * settings.HEARTBEAT_SECONDS, settings.LEASE_SECONDS / 2)

    def _heartbeat(self) -> bool:
        """Renew the lease. A transient database error is not the end of the attempt: the build
        goes on and the next wake-up tries again, until the lease could have expired by now;
        then this attempt stops before the reaper can hand the job to another one."""
        progress = self.tracker.progress()
        try:
            with dbfaults.short_lock_wait(settings.HEARTBEAT_SECONDS):
                renewed = lifecycle.job_heartbeat(
                    job_id=self.job.id, lease=self.lease, progress=progress if progress != self._last_progress else None
                )
        except DatabaseError as exc:
            if not dbfaults.is_transient(exc):
                raise
            dbfaults.recover()
            unrenewed = time.monotonic() - self._renewed_at
            # One missed renewal is routine under write contention; half the way to giving up is not.
            level = logging.WARNING if unrenewed >= self._give_up_after / 2 else logging.DEBUG
            log.log(level, "job %s: heartbeat failed (%s); lease last renewed %.1f s ago", self.job.id, exc, unrenewed)
            if unrenewed >= self._give_up_after:
                raise LeaseLost(f"the database was unavailable for {unrenewed:.0f} s; the lease may have expired")
            return True
        self._last_progress = progress
        self._renewed_at = time.monotonic()
        return renewed

    # --- steps -------------------------------------------------------------------------------

    def fetch_source(self) -> str:
        info = self.job.source_info
        source = fetch.checked_source(
            url=info["gitRepository"], ref=info.get("ref") or "", commit_sha=info.get("commitSha") or ""
        )
        home = self.workspace / "home"
        home.mkdir(parents=True, exist_ok=True)
        fetch.require_free_disk(self.workspace)
        wanted = source.commit_sha or source.ref or "the default branch"
        pinned = f" from {', '.join(source.addresses)}" if source.addresses else ""
        self.log.line(f"fetching {masking.mask_url_credentials(source.url)} at {wanted}{pinned}")
        fetcher = fetch.Fetcher(checkout=self.workspace / "src", guard=self.guard, log=self.log, home=home)
        sha = fetcher.fetch(source)
        self.log.line(f"checked out commit {sha}")
        return sha

    def prepare(self) -> dockerfile_choice.BuildInputs:
        inputs = dockerfile_choice.prepare(
            checkout=self.workspace / "src",
            build_config=self.job.build_config or {},
            working_dir=self.job.source_info.get("workingDir") or "",
            out_dir=self.workspace / "dockerfile",
            log=self.log,
        )
        self.log.line(inputs.summary)
        for warning in (inputs.plan or {}).get("warnings", ()):
            self._warn(warning)
        return inputs

    def check_sources(self, inputs: dockerfile_choice.BuildInputs, network_none: bool) -> Path:
        """What buildkitd will fetch for the build, checked before it starts; returns the source
        policy file that holds the build to it."""
        try:
            text = (inputs.dockerfile_dir / inputs.dockerfile_name).read_text(errors="replace")
        except OSError:
            text = ""
        own = naming.image_repository(self.job.user_id, self.job.project_id)
        check = egress.check_dockerfile(text, build_args=self.build_args, network_none=network_none, own_repository=own)
        if check.refused:
            raise errors.UserError(check.refused[0], code=errors.EGRESS_REFUSED)
        policy = check.policy(own)
        if settings.SBOM_SCANNER_IMAGE:  # buildkitd pulls the scanner under the same policy
            policy["rules"] += egress.allow_image(settings.SBOM_SCANNER_IMAGE)
        path = self.workspace / "source-policy.json"
        path.write_text(json.dumps(policy))
        return path

    def image_metadata(self, sha: str) -> dict[str, str]:
        job = self.job
        return buildkit.image_metadata(
            source=fetch.public_url(job.source_info["gitRepository"]), revision=sha,
            created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), title=job.project_id, job_id=job.id,
        )

    def build_and_push(self, inputs: dockerfile_choice.BuildInputs, repository: str, sha: str = "") -> str:
        """Build and push the image by digest (no tag); returns the digest."""
        network_none = self.build_settings.network == "none"
        if network_none:
            self.log.line("this build runs without a network")
        policy_file = self.check_sources(inputs, network_none)
        request = buildkit.BuildRequest(
            context_dir=inputs.context_dir,
            dockerfile_dir=inputs.dockerfile_dir,
            dockerfile_name=inputs.dockerfile_name,
            repository=repository,
            cache_ref=naming.cache_ref(self.job.user_id, self.job.project_id),
            metadata_file=self.workspace / "metadata.json",
            build_args=self.build_args,
            secrets=self.secrets,
            memory_mb=self.build_settings.memory_mb,
            cpu=self.build_settings.cpu,
            cache_namespace=naming.cache_namespace(self.job.user_id, self.job.project_id),
            generated=inputs.generated,
            network_none=network_none,
            source_policy_file=policy_file,
            attestations=self.build_settings.attestations,
            metadata=self.image_metadata(sha),
            vcs_source=fetch.public_url(self.job.source_info["gitRepository"]),
            vcs_revision=sha,
        )
        argv, secret_env = buildkit.command(request)
        self.log.line(f"building {repository}")

        def on_line(text: str) -> None:
            self.tracker.feed(text)
            self.log.line(buildkit.readable_line(text))
            # Only a generated Dockerfile's own fallback prints these (builds.dockerfile.lockfile).
            warning = lockfile.warnings_in(text) if inputs.generated else None
            if warning:
                self._warn(warning)

        started = time.monotonic()
        try:
            result = process.run(
                argv, guard=self.guard, env=buildkit.buildctl_env(secret_env), line=on_line, tick=self.log.tick,
                grace_seconds=settings.CANCEL_GRACE_SECONDS,
            )
        finally:
            export = self.tracker.export_seconds()
            self.report["phases"]["build"] = round(max(time.monotonic() - started - export, 0.0), 3)
            self.report["phases"]["push"] = round(export, 3)
            steps = self.tracker.dockerfile_steps()
            self.report["steps"] = steps
            self.report["cache"] = {"steps": len(steps), "cached": sum(1 for step in steps if step["cached"])}
        if result.returncode != 0:
            raise buildkit.classify_failure(self.tracker, result.tail)
        digest = buildkit.read_digest(request.metadata_file)
        if not digest:
            raise errors.TransientError("buildctl succeeded but reported no image digest")
        self.log.line(f"pushed {repository}@{digest}")
        return digest

    def publish_tag(self, repository: str, tag: str, digest: str) -> None:
        """The fence: only the attempt that holds the lease writes the tag. The conditional update
        renews the lease, so the reaper cannot give the job to another attempt for LEASE_SECONDS;
        each request to the registry is bounded well inside that."""
        started = time.monotonic()
        tag_writer = registry.TagWriter(repository, timeout_seconds=settings.LEASE_SECONDS / 3)
        manifest, media_type = tag_writer.read_manifest(digest)
        try:
            self.report["image"] = tag_writer.image_summary(manifest)
        except (errors.TransientError, ValueError, KeyError, TypeError) as exc:  # the tag matters more
            self.log.line(f"could not read the image's size and platform: {exc}")
        if not lifecycle.job_fence(job_id=self.job.id, lease=self.lease):
            if lifecycle.cancel_requested(self.job.id):
                raise BuildCanceled("canceled")
            raise LeaseLost("the job's lease was lost before its tag was written")
        tag_writer.put(tag, manifest, media_type)
        self.report["phases"]["push"] = round(self.report["phases"].get("push", 0.0) + time.monotonic() - started, 3)
        self.log.line(f"tagged {repository}:{tag} as {digest}")

    def _warn(self, warning: str) -> None:
        # A build step could print a secret after a marker: masked like the log.
        warning = masking.mask_url_credentials(self.masker(warning))
        if warning not in self.warnings and len(self.warnings) < MAX_WARNINGS:
            self.warnings.append(warning)

    # --- the attempt -------------------------------------------------------------------------

    def run(self) -> Outcome:
        job = self.job
        attempt = job.attempts
        self.log.line(f"attempt {attempt} on worker {worker_id()}" + (f" (retry {job.retry_count})" if job.retry_count else ""))
        try:
            return self._attempt()
        except DatabaseError as exc:
            if not dbfaults.is_transient(exc):
                raise
            # A step's own database write met a lock or a dropped connection that outlasted
            # its wait: an infrastructure failure like any other, retried by the queue.
            dbfaults.recover()
            return self._failed(errors.TransientError(f"the database was unavailable: {exc}",
                                                      code=errors.DATABASE_UNAVAILABLE))

    def _attempt(self) -> Outcome:
        job = self.job
        try:
            elapsed = lifecycle.job_set_started(job_id=job.id, lease=self.lease)
            self.guard.deadline = time.monotonic() + self.timeout - elapsed
            if elapsed >= self.timeout:
                raise BuildTimedOut("no time left for another attempt")
            started = time.monotonic()
            sha = self.fetch_source()
            inputs = self.prepare()
            self.report["phases"]["fetch"] = round(time.monotonic() - started, 3)
            repository, tag = naming.image_repository(job.user_id, job.project_id), naming.image_tag(job.id)
            image = f"{repository}:{tag}"
            if not lifecycle.job_start_building(job_id=job.id, lease=self.lease, commit_sha=sha, image_tag=image):
                if lifecycle.cancel_requested(job.id):
                    raise BuildCanceled("canceled")
                raise LeaseLost("the job's lease was lost before the build started")
            digest = self.build_and_push(inputs, repository, sha)
            self.publish_tag(repository, tag, digest)
            self.log.line("build succeeded")
            self.log.flush()
            self._db(lambda: lifecycle.job_finish(job_id=job.id, lease=self.lease, status=Status.SUCCESS,
                                                  image_digest=digest, report=self.report,
                                                  warnings=self.warnings))
            return Outcome()
        except LeaseLost as exc:
            self.log.line(f"stopping: {exc}; another worker or the reaper owns this job now")
            return Outcome()
        except BuildCanceled:
            self.log.line("build canceled")
            self._finish(Status.CANCELED, errors.CANCELED, "canceled by request")
            return Outcome()
        except BuildTimedOut:
            message = f"the job exceeded its timeout of {self.timeout} seconds"
            self.log.line(f"build stopped: {message} (counted from its first start, across retries)")
            self._finish(Status.FAILED, errors.TIMEOUT, message, step=self.tracker.running_step() or "")
            return Outcome()
        except BuildError as exc:
            return self._failed(exc)
        except OSError as exc:
            if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
                self._internal_error(exc)
                return Outcome()
            # The workspace's disk filled up: this host's fault, not the repository's.
            return self._failed(errors.TransientError(f"the workspace's disk is full: {exc}",
                                                      code=errors.DISK_SPACE_LOW))
        except DatabaseError as exc:
            if dbfaults.is_transient(exc):
                raise  # run() hands the job back; the workspace is gone by then
            self._internal_error(exc)
            return Outcome()
        except Exception as exc:  # a bug of ours: fail the job visibly rather than loop on it
            self._internal_error(exc)
            return Outcome()
        finally:
            try:
                self.log.flush()
            finally:
                shutil.rmtree(self.workspace, ignore_errors=True)

    def _failed(self, exc: BuildError) -> Outcome:
        job = self.job
        self.log.line(f"error [{exc.code}]: {exc.message}")
        if exc.retryable and job.retry_count < settings.MAX_RETRIES:
            delay = lifecycle.retry_delay(job.retry_count)
            self.log.line(f"infrastructure failure; retrying in {delay:.0f} s ({job.retry_count + 1}/{settings.MAX_RETRIES})")
            self.log.flush()
            if self._db(lambda: lifecycle.job_retry_later(
                job_id=job.id, lease=self.lease, error_code=exc.code, error=exc.message, delay_seconds=delay
            )):
                return Outcome(retry_in=delay)
            if lifecycle.cancel_requested(job.id):
                self.log.line("not retried: the job was canceled meanwhile")
            return Outcome()
        self._finish(Status.FAILED, exc.code, exc.message, step=exc.step or "")
        return Outcome()

    def _internal_error(self, exc: Exception) -> None:
        log.exception("job %s: unexpected error", self.job.id)
        self.log.lines("internal error:\n" + traceback.format_exc(limit=8))
        self._finish(Status.FAILED, errors.INTERNAL_ERROR, f"internal error: {type(exc).__name__}")

    def _finish(self, status: str, code: str, message: str, step: str = "") -> None:
        self.log.flush()
        self._db(lambda: lifecycle.job_finish(job_id=self.job.id, lease=self.lease, status=status, error_code=code,
                                              error=message, failure_step=step, report=self.report,
                                              warnings=self.warnings))

    def _db(self, call):
        """A final write of the attempt, tried again through a transient database error: each
        is a conditional update on the lease, so a repeat after a lost answer changes nothing."""
        return dbfaults.retrying(call, seconds=settings.LEASE_SECONDS, what=f"job {self.job.id}")


def run_next(hint: str = "") -> Outcome:
    """Claim the job the fair queue starts next and make one attempt. The message that woke
    this slot (`hint`, a job id) only said there is work: the job started may be another, and
    the hinted one keeps waiting for the message of the job started. When nothing may start,
    the message is owed to the queue (builds.services.state.queue)."""
    claimed = lifecycle.job_claim_next(worker=worker_id())
    if claimed is None:
        queue.message_unused()
        return Outcome(claimed=False)
    job_id, lease = claimed
    if job_id != hint:
        log.info("message for job %s started job %s (fair queue)", hint, job_id)
    try:
        with job_context(job_id):
            return attempt(job_id, lease)
    finally:
        try:
            queue.kick()  # this slot is free again: a job its tenant held back may start now
        except DatabaseError:  # the reaper kicks too
            log.exception("could not look for a job held back by its tenant's limit")


def attempt(job_id: str, lease: uuid.UUID) -> Outcome:
    """One attempt at a job this worker claimed."""
    job = Job.objects.get(pk=job_id)
    try:
        secrets = jobs.job_secrets(job)
    except jobs.SecretsUnreadable as exc:
        # No attempt could read them (SECRETS_KEY lost or rotated away): the job fails for good.
        writer.append_text(job.id, f"error [{exc.code}]: {exc.message}")
        lifecycle.job_finish(job_id=job.id, lease=lease, status=Status.FAILED, error_code=exc.code, error=exc.message)
        return Outcome()
    return BuildDirector(job, lease, secrets).run()


def run_job(job_id: str) -> Outcome:
    """Claim this very job (if it is pending) and make one attempt, whatever the queue's order."""
    lease = lifecycle.job_claim(job_id=job_id, worker=worker_id())
    if lease is None:
        return Outcome()
    return attempt(job_id, lease)
