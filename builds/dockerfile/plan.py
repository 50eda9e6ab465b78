"""From a checkout and a buildConfig to a BuildPlan: which runtime, version, commands and port,
and the Dockerfile that builds them.

Explicit buildConfig fields always win over detection. Every command that reaches the
Dockerfile, submitted or detected, has passed the allowlist; anything wrong with the request or
the repository is a UserError with a stable code.
"""

from dataclasses import asdict, dataclass, replace
from pathlib import Path

from builds import errors
from builds.dockerfile import deno, dotnet, golang, hugo, jvm, lockfile, node, php, python, ruby, rust, static
from builds.dockerfile.allowlist import Allowlist, load_allowlist
from builds.dockerfile.files import RepoFiles
from builds.dockerfile.model import Detection, Recipe, safe_relative_path
from builds.dockerfile.runtimes import Runtime, Runtimes, load_runtimes
from builds.errors import INVALID_BUILD_CONFIG, UserError

COMMAND_FIELDS = (("prebuild", "install", ("prebuildCommand", "installCommand")),
                  ("build", "build", ("buildCommand",)),
                  ("run", "run", ("runCommand",)))

# Detection order: on equal confidence the earlier runtime wins.
DETECTORS = (hugo, node, deno, python, golang, rust, jvm, dotnet, php, ruby, static)
MODULES = {"node": node, "bun": node, "python": python, "go": golang, "rust": rust, "java": jvm,
           "dotnet": dotnet, "php": php, "ruby": ruby, "static": static,
           "deno": deno, "hugo": hugo}


@dataclass(frozen=True)
class BuildPlan:
    """What will be built. A JavaScript front end served as static files keeps runtime "node"
    (or "bun") and its Node version, has no run_command, and its base_image is the static
    server's; runtime "static" is a site served as it is (or a front end asked to be static)."""

    runtime: str
    version: str
    framework: str | None
    package_manager: str | None
    install_command: str | None
    build_command: str | None
    run_command: str | None  # None when a static server serves the build output
    expose_port: int | None
    base_image: str  # the final stage's image
    dockerfile: str
    warnings: tuple[str, ...]
    context_dir: str = "."  # build context, relative to the repository root

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class _Config:
    auto: bool
    runtime: str | None
    version: str | None
    commands: dict[str, tuple[str, str]]  # phase -> (command, field name)
    port: int | None
    strict_lockfile: bool = False


def read_config(build_config: dict) -> _Config:
    """The buildConfig fields that shape a generated Dockerfile, type-checked."""
    if not isinstance(build_config, dict):
        raise UserError("buildConfig must be an object", code=INVALID_BUILD_CONFIG)
    runtime = build_config.get("runtime")
    if runtime is not None and not isinstance(runtime, str):
        raise UserError("buildConfig.runtime must be a string", code=INVALID_BUILD_CONFIG)
    version = build_config.get("version")
    if isinstance(version, bool) or (version is not None and not isinstance(version, (str, int, float))):
        raise UserError("buildConfig.version must be a string", code=INVALID_BUILD_CONFIG)
    commands = {}
    for phase, _, fields in COMMAND_FIELDS:
        for name in fields:
            value = build_config.get(name)
            if value is None or (isinstance(value, str) and not value.strip()):
                continue
            if not isinstance(value, str):
                raise UserError(f"buildConfig.{name} must be a string", code=errors.COMMAND_NOT_ALLOWED)
            commands[phase] = (value, name)
            break
    port = build_config.get("exposePort")
    if port in (None, "", 0):
        port = None
    elif isinstance(port, str) and port.strip().isdigit():
        port = int(port)
    if port is not None and (isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536):
        raise UserError(f"buildConfig.exposePort must be a port number (1-65535), got {port!r}", code=INVALID_BUILD_CONFIG)
    strict = build_config.get("strictLockfile", False)
    if not isinstance(strict, bool):
        raise UserError("buildConfig.strictLockfile must be true or false", code=INVALID_BUILD_CONFIG)
    return _Config(
        strict_lockfile=strict,
        auto=bool(build_config.get("isAutoBuild")),
        runtime=runtime.strip().lower() if isinstance(runtime, str) and runtime.strip() else None,
        version=str(version).strip() if version not in (None, "") and str(version).strip() else None,
        commands=commands,
        port=port,
    )


def check_build_config(build_config: dict, *, runtimes: Runtimes | None = None, allowlist: Allowlist | None = None) -> None:
    """Submit-time check of what the request itself names: an unknown runtime or version, or a
    command the allowlist refuses, raises UserError (UNSUPPORTED_RUNTIME, COMMAND_NOT_ALLOWED)."""
    runtimes = runtimes or load_runtimes()
    allowlist = allowlist or load_allowlist()
    config = read_config(build_config)
    if config.runtime:
        _resolve_version(_runtime(runtimes, config.runtime), config.version, "buildConfig.version")
    for phase, (command, field) in config.commands.items():
        allowlist.check(phase, command, field=field)


def plan_build(app_dir: Path, build_config: dict, *, repo_root: Path,
               runtimes: Runtimes | None = None, allowlist: Allowlist | None = None) -> BuildPlan:
    """The Dockerfile and build settings for a checkout without a Dockerfile (see the package doc)."""
    runtimes = runtimes or load_runtimes()
    allowlist = allowlist or load_allowlist()
    config = read_config(build_config)
    try:
        files = RepoFiles(Path(repo_root), Path(app_dir))
    except ValueError:
        raise UserError("workingDir leads outside the repository", code=errors.WORKING_DIR_INVALID) from None

    runtime, det = _choose(files, config, runtimes)
    # The frozen installs detection wrote (before the request's commands replace any).
    frozen = lockfile.fallbacks([det.install, det.build], lambda n: files.is_file(n) or files.at_root().is_file(n))
    config = _with_procfile(files, config, det, allowlist, runtime.name)
    det = _apply_overrides(det, config, runtime.name)
    if det.fatal and "run" not in config.commands:
        raise UserError(det.fatal, code=errors.NOTHING_TO_BUILD)
    version = _resolve_version(runtime, config.version or det.version_request,
                               "buildConfig.version" if config.version else det.version_source)
    commands = _checked_commands(det, config, allowlist)
    if not commands.get("run") and det.static_dir is None:
        raise UserError(f"no start command for the {runtime.name} app; set runCommand", code=errors.NOTHING_TO_BUILD)

    if not config.strict_lockfile:
        det.hints["lock_fallback"] = frozen
    recipe = _recipe(runtime, version, det, commands, config, runtimes, files)
    dockerfile = MODULES[runtime.name].render(recipe, files)
    return BuildPlan(
        runtime=runtime.name, version=version, framework=det.framework, package_manager=det.package_manager,
        install_command=recipe.install, build_command=recipe.build, run_command=recipe.run,
        expose_port=recipe.port, base_image=recipe.static_image or recipe.images["run"], dockerfile=dockerfile,
        warnings=tuple(dict.fromkeys(det.warnings + files.problems)),
        context_dir="." if recipe.app_subdir else (files.subdir or "."),
    )


def _choose(files: RepoFiles, config: _Config, runtimes: Runtimes) -> tuple[Runtime, Detection]:
    """The runtime, and what detection says about the app (only file facts without isAutoBuild)."""
    if not config.runtime:
        if not config.auto:
            raise UserError("the repository has no Dockerfile, isAutoBuild is false and buildConfig names no "
                            "runtime", code=errors.NOTHING_TO_BUILD)
        det = _detect(files)
        return _runtime(runtimes, det.runtime), det
    runtime = _runtime(runtimes, config.runtime)
    found = MODULES[runtime.name].detect(files, runtime=runtime.name)
    if config.auto:
        return runtime, found or Detection(runtime.name, 0)
    # Generated from buildConfig alone: detection only says which dependency files exist.
    det = Detection(runtime.name, 0, hints={k: v for k, v in (found.hints if found else {}).items() if k != "setup"})
    if runtime.name == "static":
        det.static_dir = found.static_dir if found else "."
    return runtime, det


def _checked_commands(det: Detection, config: _Config, allowlist: Allowlist) -> dict[str, str]:
    commands = {}
    for phase, attr, _ in COMMAND_FIELDS:
        command = getattr(det, attr)
        if command:
            field = config.commands[phase][1] if phase in config.commands else f"detected {attr} command"
            commands[attr] = allowlist.check(phase, command, field=field)
    for setup in det.hints.get("setup", ()):
        allowlist.check("build", setup, field="detected setup command")
    return commands


def _recipe(runtime: Runtime, version: str, det: Detection, commands: dict[str, str], config: _Config,
            runtimes: Runtimes, files: RepoFiles) -> Recipe:
    hints = dict(det.hints)
    static_image = None
    if det.static_dir is not None and runtime.name != "static":
        server = _runtime(runtimes, "static")
        static_image = server.images[server.default]["run"]
    if runtime.name == "static" and det.build:  # a JS front end: built with Node, then served
        node_runtime = _runtime(runtimes, "node")
        node_version = _resolve_version(node_runtime, hints.get("node_version_request"), hints.get("node_version_source"))
        hints["node_image"] = node_runtime.images[node_version]["build"]
    app_subdir = files.subdir if hints.get("workspace") else ""
    if app_subdir and safe_relative_path(app_subdir) != app_subdir:
        # It becomes WORKDIR and cache-mount paths; a symlinked workingDir can lead anywhere.
        raise UserError(f"the app's directory {app_subdir!r} has characters a generated Dockerfile cannot "
                        "use (only letters, digits and . _ @ + - are)", code=errors.WORKING_DIR_INVALID)
    return Recipe(
        runtime=runtime.name, version=version, images=runtime.images[version], framework=det.framework,
        package_manager=det.package_manager, install=commands.get("install"), build=commands.get("build"),
        run=commands.get("run"), port=config.port or det.port or MODULES[runtime.name].DEFAULT_PORT,
        static_dir=det.static_dir, static_image=static_image,
        app_subdir=app_subdir, hints=hints,
    )


def _runtime(runtimes: Runtimes, name: str) -> Runtime:
    runtime = runtimes.get(name)
    if runtime is None:
        raise UserError(f"unsupported runtime {name!r}; supported: {', '.join(runtimes.names())}",
                        code=errors.UNSUPPORTED_RUNTIME)
    return runtime


def _resolve_version(runtime: Runtime, request: str | None, source: str | None) -> str:
    version = runtime.resolve(request)
    if version is None:
        origin = f" (from {source})" if source else ""
        raise UserError(f"{runtime.name} version {request!r}{origin} is not supported; supported: "
                        f"{', '.join(runtime.versions)}", code=errors.UNSUPPORTED_RUNTIME)
    return version


def _detect(files: RepoFiles) -> Detection:
    found = [det for module in DETECTORS if (det := module.detect(files)) is not None]
    if not found:
        problems = f" ({'; '.join(files.problems)})" if files.problems else ""
        raise UserError("found nothing to build: no Dockerfile and no package.json, requirements.txt, "
                        f"pyproject.toml, go.mod, Cargo.toml, pom.xml, composer.json, Gemfile, deno.json, a Hugo config or index.html{problems}",
                        code=errors.NOTHING_TO_BUILD)
    best = max(found, key=lambda det: det.confidence)  # max keeps the first of equals
    return best


def procfile_web(files: RepoFiles) -> str | None:
    """The command of a Procfile's `web:` process (Heroku's format: `name: command` lines)."""
    if not files.is_file("Procfile"):
        return None
    for line in (files.read_text("Procfile") or "").splitlines():
        name, colon, command = line.partition(":")
        if colon and name.strip() == "web" and command.strip():
            return " ".join(command.split())
    return None


# Runtimes whose run stage holds the app's own tree, where a Procfile's paths and commands mean
# what they meant on Heroku. The others run what their build made, laid out anew (a Java app's
# target/x.jar is /app/app.jar), or serve it with the image's own server (PHP, static sites).
PROCFILE_RUNTIMES = ("node", "bun", "deno", "python", "ruby")


def _with_procfile(files: RepoFiles, config: _Config, det: Detection, allowlist: Allowlist,
                   runtime: str) -> _Config:
    """A Procfile's web process is the start command when the request gives none. One the
    allowlist refuses is only a warning while detection found a start command of its own."""
    if "run" in config.commands or not config.auto:
        return config
    web = procfile_web(files)
    if web is None:
        return config
    if runtime not in PROCFILE_RUNTIMES and (det.run or det.static_dir is not None):
        det.warnings.append(f"the Procfile's web process ({web!r}) is not used: the generated {runtime} image "
                            f"starts with {det.run or 'its own web server'!r}; set runCommand to start it otherwise")
        return config
    field = "the Procfile's web process"
    if det.run:
        try:
            allowlist.check("run", web, field=field)
        except UserError as exc:
            det.warnings.append(f"{exc.message}; starting with the detected {det.run!r} instead")
            return config
    return replace(config, commands={**config.commands, "run": (web, field)})


def _apply_overrides(det: Detection, config: _Config, runtime: str) -> Detection:
    det = replace(det, runtime=runtime, warnings=list(det.warnings), hints=dict(det.hints))
    for phase, attr, _ in COMMAND_FIELDS:
        if phase in config.commands:
            setattr(det, attr, config.commands[phase][0])
    if "run" in config.commands and det.static_dir is not None:
        if runtime == "static":
            det.run = None
            det.warnings.append("runtime static serves the files itself; the submitted runCommand is ignored")
        else:
            det.static_dir, det.port = None, None  # the app has a server after all
    return det
