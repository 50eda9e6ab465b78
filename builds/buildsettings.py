"""A typed view of a job's `build_config`: the settings the service itself reads (the build's
limits, network, timeout, build arguments, attestations, queue order, where the Dockerfile is).
The generator's own settings (runtime, version, commands, port) are read by builds/dockerfile/,
which validates them itself. `build_config` was validated by JobCreateInput when the job was
submitted; absent keys take the defaults here, in one place."""

from dataclasses import dataclass, field

from django.conf import settings


@dataclass(frozen=True)
class BuildSettings:
    env: dict[str, str] = field(default_factory=dict)  # secret values excluded (builds.services.jobs)
    secrets: frozenset[str] = frozenset()  # the env keys whose values are secret
    timeout_seconds: int = 0
    memory_mb: int | None = None
    cpu: float | None = None
    network: str = "bridge"  # "none": RUN steps get no network at all
    attestations: bool = True
    priority: str = "normal"
    supersede: bool | str = False  # True, False or "running"
    dockerfile_path: str = ""  # "" means the repository's Dockerfile, if it has one
    build_context_dir: str = ""
    generated: bool = False  # isAutoBuild or a runtime: a Dockerfile may be written

    @property
    def build_args(self) -> dict[str, str]:
        """The env entries passed as build arguments: the ones that are not secret."""
        return {key: value for key, value in self.env.items() if key not in self.secrets}

    @classmethod
    def of(cls, build_config: dict | None) -> "BuildSettings":
        config = build_config or {}
        limits = config.get("resourceLimits") or {}
        supersede = config.get("supersede", settings.SUPERSEDE_DEFAULT)
        return cls(
            env=dict(config.get("env") or {}),
            secrets=frozenset(config.get("secrets") or ()),
            timeout_seconds=config.get("timeoutSeconds") or settings.DEFAULT_TIMEOUT_SECONDS,
            memory_mb=limits.get("memoryMB"),
            cpu=limits.get("cpu"),
            network="none" if settings.BUILD_NETWORK == "none" or config.get("network") == "none" else "bridge",
            attestations=config.get("attestations", True) is not False,
            priority=config.get("priority") or "normal",
            supersede="running" if supersede == "running" else supersede not in (False, "false"),
            dockerfile_path=config.get("dockerfilePath") or "",
            build_context_dir=config.get("buildContextDir") or "",
            generated=bool(config.get("isAutoBuild") or config.get("runtime")),
        )
