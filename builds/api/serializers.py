"""Input validation for job creation (`POST /api/v1/jobs`). Strict about JSON types: a number where
a string belongs is an error, not silently converted. Unknown fields are ignored, and output
fields a client sends (status, imageTag, logPath, ...) are never read."""

import re

from django.conf import settings
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from builds.models import PRIORITIES
from builds.services import callbacks
from builds.services.steps import source_rules

ID_PATTERN = re.compile(r"^[A-Za-z0-9._-]{1,128}$")
ENV_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
RUNTIME = re.compile(r"^[a-z0-9][a-z0-9._+-]{0,31}$")
VERSION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,31}$")
MAX_ENV_ENTRIES = 200


class StrictString(serializers.CharField):
    default_error_messages = {"invalid": "must be a string"}

    def __init__(self, **kwargs):
        kwargs.setdefault("trim_whitespace", False)
        super().__init__(**kwargs)

    def to_internal_value(self, data):
        if not isinstance(data, str):
            self.fail("invalid")
        if "\x00" in data:
            raise serializers.ValidationError("must not contain NUL characters")
        return super().to_internal_value(data)


class StrictInteger(serializers.IntegerField):
    default_error_messages = {"invalid": "must be a whole number"}

    def to_internal_value(self, data):
        if isinstance(data, bool) or not isinstance(data, int):
            self.fail("invalid")
        return super().to_internal_value(data)


class StrictNumber(serializers.FloatField):
    default_error_messages = {"invalid": "must be a number"}

    def to_internal_value(self, data):
        if isinstance(data, bool) or not isinstance(data, (int, float)):
            self.fail("invalid")
        return super().to_internal_value(data)


class StrictBoolean(serializers.BooleanField):
    default_error_messages = {"invalid": "must be true or false"}

    def to_internal_value(self, data):
        if not isinstance(data, bool):
            self.fail("invalid")
        return data


class IdField(StrictString):
    def __init__(self, **kwargs):
        super().__init__(max_length=128, **kwargs)

    def to_internal_value(self, data):
        value = super().to_internal_value(data)
        if not ID_PATTERN.match(value):
            raise serializers.ValidationError("must be 1-128 characters of A-Z a-z 0-9 . _ -")
        if set(value) == {"."}:
            raise serializers.ValidationError("must not consist of dots only")
        return value


class Command(StrictString):
    def __init__(self, **kwargs):
        super().__init__(max_length=2000, required=False, allow_blank=True, **kwargs)

    def to_internal_value(self, data):
        value = super().to_internal_value(data)
        if any(ord(c) < 0x20 and c != "\t" for c in value):
            raise serializers.ValidationError("must be one line without control characters")
        return value.strip()


def _source_error(exc: source_rules.SourceError):
    return serializers.ValidationError(str(exc))


class SourceInfoInput(serializers.Serializer):
    gitRepository = StrictString(max_length=source_rules.MAX_URL_LENGTH)
    commitSha = StrictString(required=False, allow_blank=True, max_length=64)
    ref = StrictString(required=False, allow_blank=True, max_length=255)
    workingDir = StrictString(required=False, allow_blank=True, max_length=1024)

    def validate_gitRepository(self, value):
        try:
            repo = source_rules.parse_repository(value)
            source_rules.check_host_allowed(repo, max_age_seconds=source_rules.SUBMIT_DNS_CACHE_SECONDS)
        except source_rules.SourceError as exc:
            raise _source_error(exc)
        return value

    def validate_commitSha(self, value):
        try:
            return source_rules.validate_commit(value) if value else ""
        except source_rules.SourceError as exc:
            raise _source_error(exc)

    def validate_ref(self, value):
        try:
            return source_rules.validate_ref(value) if value else ""
        except source_rules.SourceError as exc:
            raise _source_error(exc)

    def validate_workingDir(self, value):
        try:
            return source_rules.validate_relative_path(value, "workingDir")
        except source_rules.SourceError as exc:
            raise _source_error(exc)


class ResourceLimitsInput(serializers.Serializer):
    cpu = StrictNumber(required=False, allow_null=True, min_value=0.01, max_value=64)
    memoryMB = StrictInteger(required=False, allow_null=True, min_value=16, max_value=1024 * 1024)


@extend_schema_field({"oneOf": [{"type": "string"}, {"type": "number"}], "example": "20"})
class VersionField(serializers.Field):
    """A string, or a number as the seed README's example sends (`"version": 18`)."""

    def to_internal_value(self, data):
        if isinstance(data, bool) or not isinstance(data, (str, int, float)):
            raise serializers.ValidationError("must be a string")
        value = str(data).strip()
        if value and not VERSION.match(value):
            raise serializers.ValidationError("must look like a version (e.g. 20, 3.12, 1.23)")
        return value

    def to_representation(self, value):
        return value


@extend_schema_field({"oneOf": [{"type": "integer", "minimum": 1, "maximum": 65535}, {"type": "string"}]})
class PortField(serializers.Field):
    def to_internal_value(self, data):
        if isinstance(data, str) and data.strip().isdigit():
            data = int(data.strip())
        if isinstance(data, bool) or not isinstance(data, int) or not 1 <= data <= 65535:
            raise serializers.ValidationError("must be a port number from 1 to 65535")
        return data

    def to_representation(self, value):
        return value


class BuildConfigInput(serializers.Serializer):
    isAutoBuild = StrictBoolean(required=False, default=False)
    runtime = StrictString(required=False, allow_blank=True, max_length=32)
    version = VersionField(required=False)
    prebuildCommand = Command()
    installCommand = Command()
    buildCommand = Command()
    runCommand = Command()
    exposePort = PortField(required=False, allow_null=True)
    timeoutSeconds = StrictInteger(required=False, allow_null=True, min_value=1)
    resourceLimits = ResourceLimitsInput(required=False, allow_null=True)
    env = serializers.DictField(child=StrictString(allow_blank=True, max_length=32768), required=False)
    secrets = serializers.ListField(child=StrictString(max_length=128), required=False, max_length=MAX_ENV_ENTRIES)
    dockerfilePath = StrictString(required=False, allow_blank=True, max_length=1024)
    buildContextDir = StrictString(required=False, allow_blank=True, max_length=1024)
    # "none": RUN steps get no network at all and ADD <url> is refused (a hermetic build).
    network = StrictString(required=False, allow_blank=True, max_length=16)
    # true: a lockfile out of date with its manifest fails the build (the default installs
    # without it and records a warning).
    strictLockfile = StrictBoolean(required=False)

    # The fair queue's order within a tenant (builds.services.state.queue).
    priority = StrictString(required=False, allow_blank=True, max_length=16)
    # true: this job cancels the older pending jobs of its projectId + ref + workingDir;
    # "running": the one building too. Absent: SUPERSEDE_DEFAULT.
    supersede = serializers.JSONField(required=False)
    # false: the image is pushed without provenance and SBOM attestations.
    attestations = StrictBoolean(required=False)

    def validate_priority(self, value):
        if value not in ("", *PRIORITIES):
            raise serializers.ValidationError(f"must be one of {', '.join(PRIORITIES)}")
        return value

    def validate_supersede(self, value):
        if not isinstance(value, bool) and value != "running":
            raise serializers.ValidationError('must be true, false or "running"')
        return value

    def validate_network(self, value):
        if value not in ("", "bridge", "none"):
            raise serializers.ValidationError("must be 'bridge' (the default) or 'none'")
        return value

    def validate_runtime(self, value):
        value = value.strip().lower()
        if value and not RUNTIME.match(value):
            raise serializers.ValidationError("must be a runtime name such as node, python or go")
        return value

    def validate_timeoutSeconds(self, value):
        if value is not None and value > settings.MAX_TIMEOUT_SECONDS:
            raise serializers.ValidationError(f"must be at most {settings.MAX_TIMEOUT_SECONDS}")
        return value

    def validate_env(self, value):
        if len(value) > MAX_ENV_ENTRIES:
            raise serializers.ValidationError(f"at most {MAX_ENV_ENTRIES} entries")
        bad = [key for key in value if not ENV_KEY.match(key)]
        if bad:
            raise serializers.ValidationError(f"invalid variable name {bad[0][:64]!r}")
        # env entries become build args, and BuildKit reads BUILDKIT_* build args as its own
        # settings (the frontend image, keeping .git, inline cache...).
        reserved = [key for key in value if key.upper().startswith("BUILDKIT_")]
        if reserved:
            raise serializers.ValidationError(f"{reserved[0]!r} is reserved: BUILDKIT_* variables steer BuildKit")
        return value

    def validate_dockerfilePath(self, value):
        try:
            return source_rules.validate_relative_path(value, "dockerfilePath")
        except source_rules.SourceError as exc:
            raise _source_error(exc)

    def validate_buildContextDir(self, value):
        try:
            return source_rules.validate_relative_path(value, "buildContextDir")
        except source_rules.SourceError as exc:
            raise _source_error(exc)

    def validate(self, attrs):
        missing = [key for key in attrs.get("secrets", []) if key not in attrs.get("env", {})]
        if missing:
            raise serializers.ValidationError({"secrets": f"{missing[0]!r} is not a key of env"})
        install = attrs.get("prebuildCommand") or attrs.get("installCommand") or ""
        if install:
            attrs["prebuildCommand"] = attrs["installCommand"] = install
        # Drop empty optional values so the stored config says only what the client asked.
        return {k: v for k, v in attrs.items() if v not in ("", None, [], {}) or k in ("isAutoBuild", "supersede", "attestations")}


class JobCreateInput(serializers.Serializer):
    id = IdField()
    projectId = IdField()
    userId = IdField()
    sourceType = StrictString(required=False, default="git")
    sourceInfo = SourceInfoInput()
    buildConfig = BuildConfigInput(required=False, default=dict)
    callbackUrl = StrictString(required=False, allow_blank=True, max_length=source_rules.MAX_URL_LENGTH)

    def validate_callbackUrl(self, value):
        if value:
            try:
                callbacks.check_callback_url(value, max_age_seconds=source_rules.SUBMIT_DNS_CACHE_SECONDS)
            except source_rules.SourceError as exc:
                raise _source_error(exc)
        return value

    def validate_sourceType(self, value):
        if value != "git":
            raise serializers.ValidationError("the only supported sourceType is 'git'")
        return value

    def validate_sourceInfo(self, value):
        return {k: v for k, v in value.items() if v}
