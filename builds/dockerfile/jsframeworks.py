"""JavaScript frameworks: which one an app uses, which scripts are production servers and
which are dev servers, and whether the app is a front end served as static files (and from
which output directory) or a server of its own."""

import re

from builds.dockerfile.files import RepoFiles
from builds.dockerfile.model import Detection, safe_relative_path

_WORD = r"(?<![\w./@-]){}(?![\w./-])"
_DEV_SCRIPT = re.compile("|".join([
    _WORD.format(r"vite") + r"(?!\s+build)", _WORD.format(r"parcel") + r"(?!\s+build)",
    r"\bnext\s+dev\b", r"\bnuxi?\s+dev\b", r"\bastro\s+(?:dev|preview)\b", r"react-scripts\s+start",
    r"webpack(?:-dev-server|\s+serve)", _WORD.format("nodemon"), _WORD.format("ts-node-dev"),
    r"\btsx\s+watch\b", r"--watch\b", r"\bng\s+serve\b", r"vue-cli-service\s+serve",
    r"gatsby\s+develop", r"\bremix\s+dev\b", r"react-router\s+dev", r"wrangler\s+dev",
    r"\bnest\s+start\b",
]))
_STATIC_SERVER_SCRIPT = re.compile(r"^\s*(?:npx\s+)?(?:serve|http-server|sirv|live-server|vite\s+preview)\b")
_FRONTEND_DEPS = {  # dependency -> framework label, for apps that are built into static files
    "react-scripts": "cra", "@vue/cli-service": "vue", "gatsby": "gatsby", "vite": "vite",
    "@angular/core": "angular", "parcel": "parcel", "astro": "astro",
}
_SERVER_DEPS = ("express", "fastify", "koa", "@hapi/hapi", "@nestjs/core", "hono", "@adonisjs/core", "sails")


def framework(files: RepoFiles, deps: set[str]) -> str | None:
    if "next" in deps:
        return "next"
    if "nuxt" in deps or "nuxt3" in deps:
        return "nuxt"
    if "@sveltejs/kit" in deps:
        return "sveltekit"
    if "@remix-run/node" in deps or "@remix-run/serve" in deps or "@react-router/dev" in deps:
        return "remix"
    if "@nestjs/core" in deps:
        return "nest"
    for dep in ("@angular/core", "astro", "gatsby", "react-scripts", "@vue/cli-service"):
        if dep in deps:
            return _FRONTEND_DEPS[dep]
    if "vite" in deps or files.any_file("vite.config.js", "vite.config.ts", "vite.config.mjs", "vite.config.mts"):
        return "vite"
    for dep in _SERVER_DEPS:
        if dep in deps:
            return dep.split("/")[-1]
    if "parcel" in deps:
        return "parcel"
    return None


def build_script(scripts: dict[str, str], fw: str | None) -> str | None:
    if fw == "nuxt" and "generate" in scripts and "build" not in scripts:
        return "generate"
    if "build" in scripts:
        return "build"
    named = sorted(s for s in scripts if s.startswith("build:") or s.endswith(":build"))
    return named[0] if named else None


def _is_production(body: str) -> bool:
    return not _DEV_SCRIPT.search(body)


def start_script(scripts: dict[str, str], fw: str | None) -> str | None:
    order = ["start", "start:prod", "start:production", "serve", "prod", "production"]
    if fw == "nest":
        order = ["start:prod", "start:production", "start"] + order[3:]
    for name in order:
        if name in scripts and _is_production(scripts[name]):
            return name
    return None


def static_output(files: RepoFiles, deps: set[str], scripts: dict[str, str], det: Detection,
                  start: str | None) -> str | None:
    """The directory to serve when the app is a front end built into static files, else None."""
    fw = det.framework
    start_body = scripts.get(start or "", "")
    serves_itself = start is not None and not _STATIC_SERVER_SCRIPT.match(start_body)
    build_body = scripts.get("build", "")
    if fw == "next":
        config = _first_text(files, "next.config.js", "next.config.mjs", "next.config.ts")
        config = re.sub(r"/\*.*?\*/|//[^\n]*", "", config, flags=re.S)  # a commented-out `output: "export"` is off
        return "out" if re.search(r"output\s*:\s*['\"]export['\"]", config) else None
    if fw == "nuxt":
        if "generate" in build_body or (det.build == "generate" and not serves_itself):
            return ".output/public"
        return None
    if fw == "sveltekit":
        return _sveltekit(files, deps, det)
    if fw == "remix":
        config = _first_text(files, "react-router.config.ts", "react-router.config.js")
        return "build/client" if re.search(r"ssr\s*:\s*false", config) else None
    if fw == "astro":
        config = _first_text(files, "astro.config.mjs", "astro.config.ts", "astro.config.js")
        if "@astrojs/node" in deps or re.search(r"output\s*:\s*['\"](?:server|hybrid)['\"]", config):
            det.hints["astro_server"] = True
            return None
        return None if serves_itself else _out_dir(config, "dist")
    if fw == "angular":
        return None if ("@angular/ssr" in deps and serves_itself) else _angular_output(files)
    if fw in ("vite", "cra", "vue", "gatsby", "parcel"):
        if serves_itself:
            return None  # a real server (facts 13.22: not forced to static)
        if fw == "cra":
            return "build"
        if fw == "gatsby":
            return "public"
        if fw == "vue":
            return _out_dir(_first_text(files, "vue.config.js"), "dist", key="outputDir")
        flag = re.search(r"--out-?[dD]ir[= ]([^\s&;|]+)", build_body)
        if flag and safe_relative_path(flag.group(1)) not in (None, "."):
            return safe_relative_path(flag.group(1))
        config = _first_text(files, "vite.config.ts", "vite.config.js", "vite.config.mjs", "vite.config.mts")
        return _out_dir(config, "dist")
    return None


def _sveltekit(files: RepoFiles, deps: set[str], det: Detection) -> str | None:
    config = _first_text(files, "svelte.config.js", "svelte.config.ts", "svelte.config.mjs")
    adapter = re.search(r"@sveltejs/adapter-([a-z-]+)", config)
    name = adapter.group(1) if adapter else next(
        (d.removeprefix("@sveltejs/adapter-") for d in sorted(deps) if d.startswith("@sveltejs/adapter-")), "auto")
    if name == "static":
        pages = re.search(r"pages\s*:\s*['\"]([^'\"]+)['\"]", config)
        return safe_relative_path(pages.group(1)) if pages and safe_relative_path(pages.group(1)) else "build"
    if name == "auto":
        det.hints["build_env"] = {"GCP_BUILDPACKS": "1"}
        det.warnings.append("SvelteKit uses adapter-auto: the build uses adapter-node (installed during "
                            "the build); add @sveltejs/adapter-node to devDependencies to pin it")
    elif name != "node":
        det.fatal = (f"SvelteKit adapter-{name} targets another platform and makes no server for a "
                     "container; switch to @sveltejs/adapter-node or adapter-static")
    det.hints["sveltekit_server"] = True
    return None


def _angular_output(files: RepoFiles) -> str:
    config = files.read_json("angular.json") or {}
    projects = config.get("projects") if isinstance(config.get("projects"), dict) else {}
    name = config.get("defaultProject") if config.get("defaultProject") in projects else next(iter(projects), None)
    project = projects.get(name) if isinstance(projects.get(name), dict) else {}
    build = ((project.get("architect") or {}).get("build") or {}) if isinstance(project.get("architect"), dict) else {}
    options = build.get("options") if isinstance(build, dict) and isinstance(build.get("options"), dict) else {}
    output = options.get("outputPath")
    builder = str(build.get("builder", "")) if isinstance(build, dict) else ""
    if isinstance(output, dict):
        base, browser = output.get("base"), output.get("browser", "browser")
        path = f"{base}/{browser}" if browser else base
    elif isinstance(output, str):
        path = f"{output}/browser" if builder.endswith(":application") else output
    else:
        path = f"dist/{name}/browser" if name else "dist"
    return safe_relative_path(path) or "dist"


def _out_dir(config: str, default: str, key: str = "outDir") -> str:
    match = re.search(key + r"\s*:\s*['\"]([^'\"]+)['\"]", config)
    return (safe_relative_path(match.group(1)) if match else None) or default


def _first_text(files: RepoFiles, *names: str) -> str:
    name = files.any_file(*names)
    return (files.read_text(name) or "") if name else ""
