"""Python apps: pip (requirements.txt/.in, pyproject), Poetry, uv and Pipenv; Django, Flask,
FastAPI and the other ASGI frameworks started with gunicorn/uvicorn; plain scripts.

The image is two-stage: dependencies go into a virtualenv at /opt/venv in the build stage, the
full Python image (compiler and headers, for sdists such as psycopg2), and the slim run stage
receives the virtualenv and the app, plus only the Debian packages whose shared libraries the
compiled modules load (builds.dockerfile.native).
"""

import re

from builds.dockerfile import native, versions
from builds.dockerfile.files import RepoFiles
from builds.dockerfile.model import ENTRY_POINT, MARKER, PROJECT, Detection, Recipe
from builds.dockerfile.writer import Cache, Dockerfile

DEFAULT_PORT = 8000
MARKERS = ("requirements.txt", "requirements.in", "pyproject.toml", "setup.py", "Pipfile", "manage.py")
SCRIPT_FILES = ("main.py", "app.py", "server.py", "run.py", "bot.py")
APP_FILES = ("main.py", "app.py", "api.py", "server.py", "asgi.py", "wsgi.py",
             "app/main.py", "app/app.py", "app/__init__.py", "src/main.py", "src/app.py")
ASGI_FRAMEWORKS = {"FastAPI": "fastapi", "Starlette": "starlette", "Quart": "quart",
                   "Litestar": "litestar", "Sanic": "sanic"}
_APP_ASSIGNMENT = re.compile(
    r"^(\w+)\s*(?::\s*[\w.\[\]]+\s*)?=\s*(?:\w+\.)?(FastAPI|Starlette|Quart|Litestar|Sanic|Flask)\(", re.M)
# dependency -> (build-stage packages, run-stage packages): sdists that compile against C
# libraries. The full image has most build packages; a run package listed here is installed
# even where ldd cannot see it (a library opened with dlopen).
SYSTEM_PACKAGES = {
    "psycopg2": (("gcc", "libc6-dev", "libpq-dev"), ("libpq5",)),
    "mysqlclient": (("gcc", "libc6-dev", "pkg-config", "default-libmysqlclient-dev"), ("libmariadb3",)),
}
_REQUIREMENT_NAME = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(\[[^\]]*\])?")
_ENV = {"PYTHONDONTWRITEBYTECODE": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1",
        "VIRTUAL_ENV": "/opt/venv", "PATH": "/opt/venv/bin:$PATH"}


def detect(files: RepoFiles, *, runtime: str | None = None) -> Detection | None:
    markers = [name for name in MARKERS if files.is_file(name)]
    scripts = [name for name in SCRIPT_FILES if files.is_file(name)]
    if not markers and not scripts and runtime != "python":
        return None
    pyproject = files.read_toml("pyproject.toml") if files.is_file("pyproject.toml") else None
    deps = dependencies(files, pyproject)
    det = Detection("python", PROJECT if markers else MARKER)
    det.version_request, det.version_source = python_version(files, pyproject)
    det.package_manager, det.install, det.hints["dependency_files"] = _install(files, pyproject)
    det.hints["system_packages"] = sorted(dep for dep in deps if dep in SYSTEM_PACKAGES)
    det.run, det.framework, server = _start(files, deps)
    if det.run:
        det.confidence = ENTRY_POINT
        det.port = DEFAULT_PORT
        if server and server not in deps:
            # The app needs a production server its requirements do not name.
            det.install = f"{det.install} && pip install {server}" if det.install else f"pip install {server}"
            det.warnings.append(f"{server} is not among the dependencies; the image installs it to serve the app")
        if det.framework == "django" and "whitenoise" in deps and _django_static_root(files):
            det.build = COLLECTSTATIC
            det.warnings.append("collectstatic runs during the build: the settings must import without "
                                "runtime-only secrets")
        det.hints["detected_install"] = det.install
    else:
        det.fatal = ("found no way to start the Python app (manage.py, an ASGI/WSGI app object, "
                     "wsgi.py, a package with __main__.py or main.py); set runCommand")
    return det


def dependencies(files: RepoFiles, pyproject: dict | None) -> set[str]:
    """Normalised names of the declared dependencies, plus "name[extra]" for extras."""
    names: set[str] = set()
    lines: list[str] = []
    for name in ("requirements.txt", "requirements.in"):
        lines.extend(_requirement_lines(files, name, depth=0))
    if pyproject:
        project = pyproject.get("project") if isinstance(pyproject.get("project"), dict) else {}
        lines.extend(d for d in project.get("dependencies", []) if isinstance(d, str))
        poetry = ((pyproject.get("tool") or {}).get("poetry") or {}) if isinstance(pyproject.get("tool"), dict) else {}
        if isinstance(poetry, dict) and isinstance(poetry.get("dependencies"), dict):
            lines.extend(k for k in poetry["dependencies"] if k.lower() != "python")
    pipfile = files.read_toml("Pipfile") if files.is_file("Pipfile") else None
    if pipfile and isinstance(pipfile.get("packages"), dict):
        lines.extend(pipfile["packages"])
    for line in lines:
        match = _REQUIREMENT_NAME.match(line.strip())
        if match:
            base = re.sub(r"[-_.]+", "-", match.group(1)).lower()
            names.add(base)
            for extra in (match.group(2) or "").strip("[]").split(","):
                if extra.strip():
                    names.add(f"{base}[{extra.strip().lower()}]")
    if "fastapi[standard]" in names:
        names.add("uvicorn")
    return names


def _requirement_lines(files: RepoFiles, name: str, depth: int) -> list[str]:
    text = files.read_text(name) if depth < 3 else None
    lines = []
    for raw in (text or "").splitlines():
        line = raw.split(" #")[0].strip()
        include = re.match(r"^(?:-r|--requirement)[ =]?(\S+)", line)
        if include:
            lines.extend(_requirement_lines(files, include.group(1), depth + 1))
        elif line and not line.startswith(("#", "-")):
            lines.append(line)
    return lines


def python_version(files: RepoFiles, pyproject: dict | None) -> tuple[str | None, str | None]:
    for view in (files, files.at_root()) if files.subdir else (files,):
        text = versions.version_file_line(view.read_text(".python-version"))
        if text:
            return text.removeprefix("python-"), ".python-version"
        runtime_txt = versions.version_file_line(view.read_text("runtime.txt")) or ""
        if runtime_txt.startswith("python-"):
            return runtime_txt.removeprefix("python-"), "runtime.txt"
        tool = versions.tool_versions(view.read_text(".tool-versions"), ("python",))
        if tool:
            return tool, ".tool-versions"
    if pyproject:
        project = pyproject.get("project") if isinstance(pyproject.get("project"), dict) else {}
        if isinstance(project.get("requires-python"), str):
            return project["requires-python"], "pyproject.toml requires-python"
        tool = pyproject.get("tool") if isinstance(pyproject.get("tool"), dict) else {}
        poetry_deps = ((tool.get("poetry") or {}).get("dependencies") or {}) if isinstance(tool.get("poetry"), dict) else {}
        if isinstance(poetry_deps, dict) and isinstance(poetry_deps.get("python"), str):
            return poetry_deps["python"], "pyproject.toml tool.poetry python"
    pipfile = files.read_toml("Pipfile") if files.is_file("Pipfile") else None
    requires = (pipfile or {}).get("requires") if isinstance((pipfile or {}).get("requires"), dict) else {}
    for key in ("python_full_version", "python_version"):
        if isinstance(requires.get(key), str):
            return requires[key], f"Pipfile {key}"
    return None, None


def _install(files: RepoFiles, pyproject: dict | None) -> tuple[str | None, str | None, list[str] | None]:
    """(package manager, install command, the files it needs; None = the whole source)."""
    tool = (pyproject or {}).get("tool") if isinstance((pyproject or {}).get("tool"), dict) else {}
    if files.is_file("uv.lock") and pyproject:
        return "uv", "pip install uv && uv sync --locked --no-dev --no-install-project", ["pyproject.toml", "uv.lock"]
    if files.is_file("poetry.lock") or ("poetry" in tool and not (pyproject or {}).get("project")):
        needed = ["pyproject.toml"] + (["poetry.lock"] if files.is_file("poetry.lock") else [])
        return "poetry", "pip install poetry && poetry install --only main --no-interaction --no-root", needed
    if files.is_file("Pipfile"):
        if files.is_file("Pipfile.lock"):
            return "pipenv", "pip install pipenv && pipenv install --deploy --system", ["Pipfile", "Pipfile.lock"]
        return "pipenv", "pip install pipenv && pipenv install --system --skip-lock", ["Pipfile"]
    for name in ("requirements.txt", "requirements.in"):
        if files.is_file(name):
            text = files.read_text(name) or ""
            standalone = not re.search(r"^\s*(-[rce]|--requirement|--constraint|--editable|\.|file:)", text, re.M)
            return "pip", f"pip install -r {name}", [name] if standalone else None
    if pyproject is not None or files.is_file("setup.py"):
        return "pip", "pip install .", None
    return None, None, None


def _start(files: RepoFiles, deps: set[str]) -> tuple[str | None, str | None, str | None]:
    """(start command, framework, the server package it needs)."""
    bind = "--bind 0.0.0.0:${PORT:-8000}"
    uvicorn = "--host 0.0.0.0 --port ${PORT:-8000}"
    if files.is_file("manage.py"):
        package = _django_package(files)
        if package:
            asgi_only = ({"channels", "daphne", "uvicorn"} & deps) and "gunicorn" not in deps
            if asgi_only and files.is_file(f"{package}/asgi.py"):
                return f"uvicorn {package}.asgi:application {uvicorn}", "django", "uvicorn"
            return f"gunicorn {package}.wsgi:application {bind}", "django", "gunicorn"
    for name in APP_FILES:
        text = files.read_text(name) if files.is_file(name) else None
        match = _APP_ASSIGNMENT.search(text or "")
        if not match:
            continue
        module = name.removesuffix(".py").removesuffix("/__init__").replace("/", ".")
        variable, kind = match.groups()
        if kind == "Flask":
            return f"gunicorn {module}:{variable} {bind}", "flask", "gunicorn"
        return f"uvicorn {module}:{variable} {uvicorn}", ASGI_FRAMEWORKS[kind], "uvicorn"
    if re.search(r"^application\s*=", files.read_text("wsgi.py") or "", re.M):
        return f"gunicorn wsgi:application {bind}", "wsgi", "gunicorn"
    if re.search(r"^application\s*=", files.read_text("asgi.py") or "", re.M):
        return f"uvicorn asgi:application {uvicorn}", "asgi", "uvicorn"
    for entry in files.list_dir():
        if re.fullmatch(r"[A-Za-z_]\w*", entry) and files.is_file(f"{entry}/__main__.py"):
            return f"python -m {entry}", None, None
    script = files.any_file(*SCRIPT_FILES)
    return (f"python {script}", None, None) if script else (None, None, None)


def _django_package(files: RepoFiles) -> str | None:
    match = re.search(r"DJANGO_SETTINGS_MODULE['\"]\s*,\s*['\"]([A-Za-z_][\w.]*)['\"]", files.read_text("manage.py") or "")
    candidates = [match.group(1).split(".")[0]] if match else []
    candidates += [name for name in files.list_dir() if files.is_file(f"{name}/wsgi.py")]
    return next((c for c in candidates if re.fullmatch(r"[A-Za-z_]\w*", c) and files.is_file(f"{c}/wsgi.py")), None)


def _django_static_root(files: RepoFiles) -> bool:
    package = _django_package(files)
    if package is None:
        return False
    names = [f"{package}/settings.py"] + [f"{package}/settings/{n}" for n in files.list_dir(f"{package}/settings")]
    return any("STATIC_ROOT" in (files.read_text(n) or "") for n in names if n.endswith(".py"))


# --- Dockerfile -------------------------------------------------------------------------------

_CACHES = {
    "pip": (Cache("pip", "/root/.cache/pip"),),
    "pipenv": (Cache("pip", "/root/.cache/pip"),),
    "poetry": (Cache("pip", "/root/.cache/pip"), Cache("poetry", "/root/.cache/pypoetry")),
    "uv": (Cache("pip", "/root/.cache/pip"), Cache("uv", "/root/.cache/uv")),
}


COLLECTSTATIC = "python manage.py collectstatic --noinput"
# Settings that name STATIC_ROOT only for one platform (Render's Django template sets it when
# RENDER is in the environment) fail collectstatic with ImproperlyConfigured here. The app still
# serves (that template runs with DEBUG then, and whitenoise finds the apps' static files), so
# the step says so in the job's
# warnings instead of failing the build; any other failure of collectstatic fails it. The
# marker is printed as hubfly-%s + "warning:" so that BuildKit's echo of the RUN line never holds
# it (builds/dockerfile/lockfile.py).
_COLLECTSTATIC_OR_WARN = (
    f"{COLLECTSTATIC} > /tmp/hubfly-collectstatic.log 2>&1; status=$?; cat /tmp/hubfly-collectstatic.log; "
    "if [ $status -ne 0 ]; then grep -q STATIC_ROOT /tmp/hubfly-collectstatic.log || exit $status; "
    "printf 'hubfly-%s collectstatic skipped: the settings set no STATIC_ROOT in this build, so static "
    "files are not collected\\n' 'warning:'; fi"
)


def render(recipe: Recipe, files: RepoFiles) -> str:
    hints = recipe.hints
    manager = recipe.package_manager or "pip"
    caches = _CACHES.get(manager, _CACHES["pip"])
    system = hints.get("system_packages") or []
    build_packages = [p for dep in system for p in SYSTEM_PACKAGES[dep][0]]
    run_packages = [p for dep in system for p in SYSTEM_PACKAGES[dep][1]]

    df = Dockerfile(tolerant=recipe.hints.get("lock_fallback", ())).stage(recipe.images["build"], "build")
    if build_packages:
        df.run(native.apt_install_missing(build_packages))
    df.env(**_ENV)
    if manager == "uv":
        df.env(UV_PROJECT_ENVIRONMENT="/opt/venv", UV_LINK_MODE="copy", UV_PYTHON_DOWNLOADS="never")
    if manager == "poetry":
        df.env(POETRY_VIRTUALENVS_CREATE="false")
    df.run("python -m venv /opt/venv")
    df.workdir("/app")
    needed = hints.get("dependency_files")
    detected = recipe.install and _is_detected_install(recipe.install, hints)
    df.install_and_copy_source(recipe.install, needed if detected else None, caches)
    if recipe.build == COLLECTSTATIC:
        df.run(_COLLECTSTATIC_OR_WARN)
    elif recipe.build:
        df.run(recipe.build)
    native.record_libraries(df, "/opt/venv", "*.so*", run_packages)

    df.stage(recipe.images["run"])
    native.install_libraries(df)
    df.create_user()
    df.env(PYTHONUNBUFFERED="1", **_ENV, PORT=recipe.port)
    df.copy("/opt/venv", "/opt/venv", from_stage="build")
    df.copy("/app", "/app", from_stage="build", chown=True)  # before WORKDIR: see node.render
    df.workdir("/app")
    df.user().expose(recipe.port)
    if recipe.run:
        df.start(recipe.run)
    return df.text()


def _is_detected_install(command: str, hints: dict) -> bool:
    """Only the install detection chose is known to need just the dependency files."""
    return command == hints.get("detected_install")
