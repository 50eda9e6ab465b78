"""Node.js and Bun apps: detection from package.json, lockfiles and framework files, and the
Dockerfiles for servers and for front ends served as static files.

Decisions that differ from the Go original on purpose (its detection defects):
- bun.lockb is Bun, like bun.lock.
- Installs use the lockfile (npm ci, --frozen-lockfile, --immutable); one out of date with
  package.json falls back to a plain install with a warning (builds.dockerfile.lockfile).
- A Vite/Vue/Solid/CRA front end with a real production start script (node server.js, ...)
  runs that server; only without one is it built and served as static files.
- SvelteKit's default adapter-auto is built with adapter-node (adapter-auto picks it when
  GCP_BUILDPACKS is set), instead of being refused.
"""

import re

from builds.dockerfile import jsframeworks, native, versions, webserver
from builds.dockerfile.files import RepoFiles
from builds.dockerfile.model import ENTRY_POINT, MARKER, PROJECT, Detection, Recipe, safe_relative_path
from builds.dockerfile.writer import Cache, Dockerfile

DEFAULT_PORT = 3000
LOCKFILES = (  # precedence when several exist
    ("bun.lock", "bun"), ("bun.lockb", "bun"), ("pnpm-lock.yaml", "pnpm"),
    ("yarn.lock", "yarn"), ("package-lock.json", "npm"), ("npm-shrinkwrap.json", "npm"),
)
DEPENDENCY_FILES = (
    "package.json", "package-lock.json", "npm-shrinkwrap.json", "yarn.lock", "pnpm-lock.yaml",
    "pnpm-workspace.yaml", "bun.lock", "bun.lockb", "bunfig.toml", ".npmrc", ".yarnrc", ".yarnrc.yml",
)
LIFECYCLE_SCRIPTS = ("preinstall", "install", "postinstall", "prepare")
WORKSPACE_MARKERS = ("pnpm-workspace.yaml", "lerna.json", "nx.json", "turbo.json")
ENTRY_FILES = (
    "server.js", "server.mjs", "app.js", "app.mjs", "index.js", "index.mjs", "main.js",
    "dist/server.js", "dist/index.js", "dist/main.js", "build/server.js", "build/index.js",
)
BUN_ENTRY_FILES = ("server.ts", "index.ts", "src/index.ts", "app.ts", "server.js", "index.js", "app.js")
# Addons compiled by node-gyp when no prebuilt binary fits (or cannot be downloaded): the build
# stage then needs python3, make and a C++ compiler, which the slim node images lack.
NATIVE_MODULES = (
    "argon2", "bcrypt", "better-sqlite3", "bufferutil", "canvas", "cpu-features", "farmhash", "isolated-vm",
    "kerberos", "leveldown", "libxmljs", "libxmljs2", "microtime", "node-pty", "node-sass", "pg-native",
    "re2", "serialport", "@serialport/bindings-cpp", "sqlite3", "usb", "utf-8-validate", "zeromq",
)
NODE_CODENAMES = {
    "argon": "4", "boron": "6", "carbon": "8", "dubnium": "10", "erbium": "12", "fermium": "14",
    "gallium": "16", "hydrogen": "18", "iron": "20", "jod": "22", "krypton": "24",
}
_PORT_PATTERNS = (
    re.compile(r"(?:--port|-p)[= ](\d{2,5})\b"),
    re.compile(r"\bPORT=(\d{2,5})\b"),
    re.compile(r"\$\{PORT:-(\d{2,5})\}"),
)
_SOURCE_PORT = re.compile(r"process\.env\.PORT\s*(?:\|\||\?\?)\s*['\"]?(\d{2,5})|\.listen\(\s*(\d{2,5})\s*[,)]")
def read_package(files: RepoFiles) -> dict | None:
    return files.read_json("package.json") if files.is_file("package.json") else None


def detect(files: RepoFiles, *, runtime: str | None = None) -> Detection | None:
    if not files.is_file("package.json"):
        return None
    pkg = read_package(files)
    if pkg is None:
        problem = files.problems[-1] if files.problems else "package.json cannot be read"
        return Detection(runtime or "node", MARKER, fatal=problem)
    root = files.at_root()
    workspace = bool(files.subdir) and _is_workspace_root(root)
    pm, lockfile = package_manager(files, pkg, root if workspace else None)
    tool = _tool_pin(pkg, files, root if workspace else None, pm)
    runtime = runtime or ("bun" if pm == "bun" else "node")
    if runtime == "node" and pm == "bun":  # asked for Node: npm cannot read bun's lockfile
        pm, lockfile = "npm", None
    elif runtime == "bun" and pm != "bun":  # asked for Bun: its images have no npm
        pm, lockfile = "bun", files.any_file("bun.lock", "bun.lockb")
    det = Detection(runtime, PROJECT, package_manager=pm)
    det.hints.update(tool)
    scripts = {k: v for k, v in (pkg.get("scripts") or {}).items() if isinstance(k, str) and isinstance(v, str)} \
        if isinstance(pkg.get("scripts"), dict) else {}
    deps = _dependencies(pkg)
    det.version_request, det.version_source = node_version(files, pkg) if runtime == "node" else bun_version(files, pkg)
    det.install = install_command(pm, lockfile)
    det.hints.update(
        workspace=workspace,
        cacheable_install=not workspace and not (set(LIFECYCLE_SCRIPTS) & set(scripts))
        and not _has_patches(pkg),
        scripts=scripts,
        dev_dependencies=sorted((pkg.get("devDependencies") or {}) if isinstance(pkg.get("devDependencies"), dict) else {}),
    )
    lock_text = (root if workspace else files).read_text(lockfile) if lockfile else None
    det.hints["native_modules"] = native_modules(deps, lock_text)
    if "@prisma/client" in deps and files.is_file("prisma/schema.prisma"):
        det.hints["setup"] = ["bunx prisma generate" if pm == "bun" else "npx prisma generate"]

    det.framework = jsframeworks.framework(files, deps)
    build_script = jsframeworks.build_script(scripts, det.framework)
    if build_script:
        det.build = run_script(pm, build_script)
    start = jsframeworks.start_script(scripts, det.framework)
    static_dir = jsframeworks.static_output(files, deps, scripts, det, start)
    if det.fatal:
        return det
    if static_dir is not None:
        if not det.build:
            det.fatal = (f"the {det.framework} front end has no build script (and no production start script); "
                         "add a build script or set buildCommand")
            return det
        det.static_dir, det.port = static_dir, webserver.DEFAULT_PORT
        det.confidence = ENTRY_POINT if files.any_file("index.html", "public/index.html", "src/index.html") \
            or det.framework in ("angular", "nuxt", "sveltekit", "astro", "gatsby", "next") else PROJECT
        if "laravel-vite-plugin" in deps:
            det.confidence = MARKER  # Laravel's asset pipeline: the app is the PHP one
        return det
    det.run = _run_command(files, pm, start, det.framework, runtime, det.hints)
    if det.run:
        det.confidence = ENTRY_POINT
        det.port = _port(files, scripts, start, det.run) or DEFAULT_PORT
        return det
    if files.is_file("index.html") and not det.build:
        return None  # a plain site that happens to have a package.json: the static detector's
    det.confidence = PROJECT if (det.build or deps) else MARKER
    det.fatal = ("package.json has no production start script (start, start:prod, serve) and no "
                 "server.js/app.js/index.js; add one or set runCommand")
    return det


def _declared_package_manager(pkg: dict, workspace_root: RepoFiles | None) -> str:
    """package.json's `packageManager` ("yarn@4.1.0"), the workspace root's winning; "" if none."""
    declared = pkg.get("packageManager") if isinstance(pkg.get("packageManager"), str) else ""
    if workspace_root is not None:
        root_pkg = workspace_root.read_json("package.json") or {}
        if isinstance(root_pkg.get("packageManager"), str):
            declared = root_pkg["packageManager"]
    return declared


def package_manager(files: RepoFiles, pkg: dict, workspace_root: RepoFiles | None) -> tuple[str, str | None]:
    """(npm|yarn|pnpm|bun, the lockfile or None); yarn 2+ is reported as "yarn-berry"."""
    source = workspace_root or files
    declared = _declared_package_manager(pkg, workspace_root)
    lockfile = next((name for name, _ in LOCKFILES if source.is_file(name)), None)
    name = declared.split("@")[0].strip().lower() if declared else ""
    if name not in ("npm", "yarn", "pnpm", "bun"):
        name = dict(LOCKFILES)[lockfile] if lockfile else "npm"
    if lockfile and dict(LOCKFILES)[lockfile] != name:
        lockfile = next((n for n, pm in LOCKFILES if pm == name and source.is_file(n)), None)
    if name == "yarn":
        major = re.match(r"yarn@(\d+)", declared or "")
        if (major and int(major.group(1)) >= 2) or source.is_file(".yarnrc.yml"):
            name = "yarn-berry"
    return name, lockfile


def native_modules(deps: set[str], lock_text: str | None) -> list[str]:
    """The known node-gyp addons among the dependencies, direct or (by the lockfile) indirect."""
    found = set(deps) & set(NATIVE_MODULES)
    if lock_text:
        for name in NATIVE_MODULES:
            # npm: "node_modules/name"; yarn, pnpm, bun: name@version or "name@...
            if re.search(rf"node_modules/{re.escape(name)}\"|(?:^|[\s\"'/]){re.escape(name)}@", lock_text, re.M):
                found.add(name)
    return sorted(found)


def _tool_pin(pkg: dict, files: RepoFiles, workspace_root: RepoFiles | None, pm: str) -> dict:
    """How the project pins its package manager: the `packageManager` version (the version
    only, without a +sha suffix) and, for yarn 2+, whether .yarnrc.yml's yarnPath names a
    committed release (which any yarn, even 1.x, hands the work to)."""
    source = workspace_root or files
    declared = _declared_package_manager(pkg, workspace_root)
    name, _, version = declared.partition("@")
    version = version.split("+")[0].strip()
    tool = {"tool_version": version if name.strip().lower() == pm.removesuffix("-berry")
            and re.fullmatch(r"\d+(?:\.\d+){0,2}(?:-[0-9A-Za-z.]+)?", version) else None}
    if pm == "yarn-berry":
        match = re.search(r"^yarnPath:\s*['\"]?([^'\"\s#]+)", source.read_text(".yarnrc.yml") or "", re.M)
        tool["yarn_path"] = bool(match and source.is_file(match.group(1)))
    if pm == "pnpm" and not tool["tool_version"]:
        lock = re.search(r"^lockfileVersion:\s*['\"]?(\d+)", source.read_text("pnpm-lock.yaml") or "", re.M)
        tool["tool_version"] = {"5": "7", "6": "8"}.get(lock.group(1) if lock else "", "10")
    return tool


def tool_setup(pm: str, hints: dict) -> str | None:
    """The shell step that provides the package manager in the build stage, or None for npm and
    bun (in their images). Pinned tools come from the npm registry into /opt/pm (npm checks
    their integrity; no corepack download, whose signature check can fail); a tool the image
    already has at the wanted version is used as it is."""
    version = hints.get("tool_version")
    install = "npm install -g --prefix /opt/pm"
    if pm == "yarn" or (pm == "yarn-berry" and hints.get("yarn_path")):
        # Classic yarn ships in the node images; yarn 1.22 runs a committed yarnPath release.
        spec = f"yarn@{version}" if pm == "yarn" and version else "yarn@1"
        return f"mkdir -p /opt/pm && {{ command -v yarn >/dev/null || {install} {spec}; }}"
    if pm == "yarn-berry":
        return f"mkdir -p /opt/pm && {install} @yarnpkg/cli-dist@{version or '4'}"
    if pm == "pnpm":
        check = (f"[ \"$(pnpm --version 2>/dev/null)\" = {version} ]" if version and version.count(".") == 2
                 else "command -v pnpm >/dev/null")
        return f"mkdir -p /opt/pm && {{ {check} || {install} pnpm@{version or '10'}; }}"
    return None


def install_command(pm: str, lockfile: str | None) -> str:
    if pm == "npm":
        return "npm ci" if lockfile else "npm install"
    if pm == "yarn":
        return "yarn install --frozen-lockfile" if lockfile else "yarn install"
    if pm == "yarn-berry":
        return "yarn install --immutable" if lockfile else "yarn install"
    if pm == "pnpm":
        return "pnpm install --frozen-lockfile" if lockfile else "pnpm install"
    return "bun install --frozen-lockfile" if lockfile else "bun install"


def run_script(pm: str, script: str) -> str:
    tool = {"yarn-berry": "yarn"}.get(pm, pm)
    if script == "start" and tool in ("npm", "yarn", "pnpm"):
        return f"{tool} start"
    return f"{tool} run {script}"


def node_version(files: RepoFiles, pkg: dict) -> tuple[str | None, str | None]:
    for view in (files, files.at_root()) if files.subdir else (files,):
        for name in (".nvmrc", ".node-version"):
            text = versions.version_file_line(view.read_text(name))
            if text:
                return _node_alias(text), name
        tool = _tool_version(view, ("nodejs", "node"))
        if tool:
            return tool, ".tool-versions"
    engines = pkg.get("engines") if isinstance(pkg.get("engines"), dict) else {}
    if isinstance(engines.get("node"), str) and engines["node"].strip():
        return engines["node"].strip(), "package.json engines.node"
    volta = pkg.get("volta") if isinstance(pkg.get("volta"), dict) else {}
    if isinstance(volta.get("node"), str):
        return volta["node"], "package.json volta.node"
    return None, None


def bun_version(files: RepoFiles, pkg: dict) -> tuple[str | None, str | None]:
    text = versions.version_file_line(files.read_text(".bun-version"))
    if text:
        return text.removeprefix("bun-v"), ".bun-version"
    tool = _tool_version(files, ("bun",))
    if tool:
        return tool, ".tool-versions"
    declared = pkg.get("packageManager") if isinstance(pkg.get("packageManager"), str) else ""
    if declared.startswith("bun@"):
        return declared[4:].split("+")[0].strip(), "package.json packageManager"
    engines = pkg.get("engines") if isinstance(pkg.get("engines"), dict) else {}
    if isinstance(engines.get("bun"), str) and engines["bun"].strip():
        return engines["bun"].strip(), "package.json engines.bun"
    return None, None


def _node_alias(text: str) -> str:
    lowered = text.lower().removeprefix("v")
    if lowered.startswith("lts/"):
        return NODE_CODENAMES.get(lowered[4:], "lts")
    return {"node": "latest", "stable": "latest"}.get(lowered, lowered)


def _tool_version(files: RepoFiles, names: tuple[str, ...]) -> str | None:
    return versions.tool_versions(files.read_text(".tool-versions"), names)


def _dependencies(pkg: dict) -> set[str]:
    names: set[str] = set()
    for key in ("dependencies", "devDependencies", "optionalDependencies", "peerDependencies"):
        if isinstance(pkg.get(key), dict):
            names.update(k for k in pkg[key] if isinstance(k, str))
    return names


def _has_patches(pkg: dict) -> bool:
    pnpm = pkg.get("pnpm") if isinstance(pkg.get("pnpm"), dict) else {}
    return bool(pnpm.get("patchedDependencies")) or "patch-package" in _dependencies(pkg)


def _is_workspace_root(root: RepoFiles) -> bool:
    pkg = root.read_json("package.json") if root.is_file("package.json") else None
    return bool(pkg and pkg.get("workspaces")) or root.any_file(*WORKSPACE_MARKERS) is not None


def _run_command(files: RepoFiles, pm: str, start: str | None, fw: str | None, runtime: str,
                 hints: dict) -> str | None:
    if start:
        # pnpm and yarn are not in the runtime image; npm runs the same package.json script.
        return run_script("bun" if runtime == "bun" else ("yarn" if pm == "yarn-berry" else "npm"), start)
    node = "bun" if runtime == "bun" else "node"
    built_server = {
        "nest": "dist/main.js", "nuxt": ".output/server/index.mjs",
        "sveltekit": "build" if hints.get("sveltekit_server") else None,
        "astro": "dist/server/entry.mjs" if hints.get("astro_server") else None,
    }.get(fw or "")
    if built_server:
        return f"{node} {built_server}"
    entries = BUN_ENTRY_FILES if runtime == "bun" else ENTRY_FILES
    entry = files.any_file(*entries)
    if entry is None:
        main = read_package(files) or {}
        candidate = safe_relative_path(main.get("main"))
        entry = candidate if candidate not in (None, ".") and files.is_file(candidate) else None
    return f"{node} {entry}" if entry else None


def _port(files: RepoFiles, scripts: dict[str, str], start: str | None, run: str) -> int | None:
    texts = [scripts.get(start or "", ""), run]
    for text in texts:
        for pattern in _PORT_PATTERNS:
            match = pattern.search(text)
            if match and 0 < int(match.group(1)) < 65536:
                return int(match.group(1))
    entry = next((w for w in (scripts.get(start or "", "") + " " + run).split() if w.endswith((".js", ".mjs", ".ts"))), None)
    if entry and (source := files.read_text(entry)):
        match = _SOURCE_PORT.search(source)
        if match:
            port = int(match.group(1) or match.group(2))
            return port if 0 < port < 65536 else None
    return None


def _can_prune(run: str, hints: dict) -> bool:
    """Dropping devDependencies is safe unless the start command runs one (ts-node, tsx...)."""
    script = re.fullmatch(r"(?:npm|yarn|pnpm|bun) (?:start|run ([\w:.-]+))", run)
    body = (hints.get("scripts") or {}).get(script.group(1) or "start", "") if script else run
    return not any(re.search(rf"(?<![\w@/-]){re.escape(dep)}(?![\w/-])", body)
                   for dep in hints.get("dev_dependencies", ()))


# --- Dockerfile -------------------------------------------------------------------------------

_CACHES = {
    "npm": (Cache("npm", "/root/.npm"),),
    "yarn": (Cache("yarn", "/usr/local/share/.cache/yarn"),),
    "yarn-berry": (Cache("yarn-berry", "/root/.yarn/berry/cache"),),
    "pnpm": (Cache("pnpm", "/root/.local/share/pnpm/store"),),
    "bun": (Cache("bun", "/root/.bun/install/cache"),),
}
_PRUNE = {"npm": "npm prune --omit=dev", "pnpm": "pnpm prune --prod"}


def package_manager_of(command: str | None) -> str | None:
    first = (command or "").split(" ")[0]
    return first if first in ("npm", "yarn", "pnpm", "bun") else None


def render(recipe: Recipe, files: RepoFiles) -> str:
    pm = recipe.package_manager or package_manager_of(recipe.install) or ("bun" if recipe.runtime == "bun" else "npm")
    hints = recipe.hints
    caches = _CACHES.get(pm, ())
    workdir = "/app" + (f"/{recipe.app_subdir}" if recipe.app_subdir else "")

    df = Dockerfile(tolerant=recipe.hints.get("lock_fallback", ())).stage(recipe.images["build"], "build")
    df.workdir("/app")
    setup = tool_setup(pm, hints)
    if setup:
        df.env(PATH="/opt/pm/bin:$PATH")
        df.run(setup, _CACHES["npm"])
    compiled = bool(hints.get("native_modules"))
    if compiled:
        df.run(native.apt_install_missing(("g++", "make", "python3")))
    if recipe.install and hints.get("cacheable_install", True) and _installs_only_dependencies(recipe.install):
        _copy_dependency_files(df, files)
        df.run(recipe.install, caches)
        df.copy_source()
    else:
        df.copy_source()
        if recipe.install:
            df.run(recipe.install, caches)
    if workdir != "/app":
        df.workdir(workdir)
    build_env = hints.get("build_env") or {}
    if build_env:
        df.env(**build_env)
    for command in hints.get("setup", ()):
        df.run(command)
    if recipe.build:
        build_caches = (Cache("next", f"{workdir}/.next/cache"),) if recipe.framework == "next" else ()
        # adapter-auto installs adapter-node during the build: give it the package cache
        df.run(recipe.build, build_caches + (caches if build_env else ()))

    if recipe.static_dir is not None:
        source = f"{workdir}/" if recipe.static_dir == "." else f"{workdir}/{recipe.static_dir}/"
        webserver.server_stage(df, recipe.static_image, recipe.port, from_stage="build", source=source)
        return df.text()
    if recipe.install and pm in _PRUNE and not hints.get("workspace") and _can_prune(recipe.run or "", hints):
        df.run(_PRUNE[pm], caches)

    if compiled:
        native.record_libraries(df, "/app", "*.node")

    df.stage(recipe.images["run"])
    if compiled:
        native.install_libraries(df)
    df.create_user()
    if (recipe.run or "").split(" ")[0] in ("pnpm", "yarn"):
        if setup:  # the tool the build stage installed (or an empty /opt/pm: the image's own)
            df.copy("/opt/pm", "/opt/pm", from_stage="build")
            df.env(PATH="/opt/pm/bin:$PATH")
        else:  # asked to start with a package manager the project does not use
            tool = recipe.run.split(" ")[0]
            df.run(f"command -v {tool} >/dev/null || npm install -g {tool}@{'10' if tool == 'pnpm' else '1'}")
    df.env(NODE_ENV="production", HOST="0.0.0.0", PORT=recipe.port)
    # Copied before WORKDIR: a directory WORKDIR made stays root's even under COPY --chown,
    # and the app may write beside its files (caches, uploads, Vite's config bundle).
    df.copy("/app", "/app", from_stage="build", chown=True)
    df.workdir(workdir)
    df.user().expose(recipe.port)
    if recipe.run:
        df.start(recipe.run)
    return df.text()


def _copy_dependency_files(df: Dockerfile, files: RepoFiles) -> None:
    present = [name for name in DEPENDENCY_FILES if files.is_file(name)] or ["package.json"]
    df.copy(present, "./")
    for directory in (".yarn/releases", ".yarn/plugins"):
        if files.is_dir(directory):
            df.copy(directory, f"{directory}/")


def _installs_only_dependencies(command: str) -> bool:
    """Whether the install needs nothing but the manifests and lockfiles (so it can run before
    the source is copied, keeping its layer cached across code changes)."""
    return all(re.fullmatch(r"(npm (ci|install)|yarn( install)?|pnpm install|bun install)( --[a-z-]+)*", part.strip())
               for part in command.split("&&"))
