"""Deno apps: a deno.json(c) with a `start` task, or a TypeScript/JavaScript entry file that uses
Deno (the `Deno` global, deno.land/jsr imports). Dependencies (remote modules, jsr:, npm:) are
fetched into DENO_DIR during the build, so the image starts without downloading; the app runs
as a non-root user with the network, environment and read permissions a web server needs.
"""

import json
import re

from builds.dockerfile.files import RepoFiles
from builds.dockerfile.model import ENTRY_POINT, MARKER, PROJECT, Detection, Recipe
from builds.dockerfile.writer import Dockerfile

DEFAULT_PORT = 8000
CONFIG_FILES = ("deno.json", "deno.jsonc")
ENTRY_FILES = tuple(f"{directory}{name}.{ext}" for directory in ("", "src/")
                    for name in ("main", "server", "index", "app", "mod") for ext in ("ts", "js", "tsx", "mjs"))
PERMISSIONS = "--allow-net --allow-env --allow-read"
DENO_DIR = "/deno-dir"
_USES_DENO = re.compile(r"\bDeno\.\w|[\"'](?:https://deno\.land/|jsr:)")
_FRAMEWORKS = (("fresh", "$fresh/"), ("fresh", "@fresh/"), ("hono", "hono"), ("oak", "/oak"), ("oak", "@oak/oak"))


def detect(files: RepoFiles, *, runtime: str | None = None) -> Detection | None:
    config_name = files.any_file(*CONFIG_FILES)
    if config_name is None and files.is_file("package.json") and runtime != "deno":
        return None  # a Node project; Node's detector speaks for it
    entry = next((name for name in ENTRY_FILES if files.is_file(name)
                  and (config_name or runtime == "deno" or _USES_DENO.search(files.read_text(name) or ""))), None)
    if config_name is None and entry is None and not files.is_file("deno.lock"):
        return None
    det = Detection("deno", PROJECT if config_name else MARKER, package_manager="deno")
    det.version_request, det.version_source = _version(files)
    config = _read_config(files, config_name) if config_name else {}
    tasks = config.get("tasks") if isinstance(config.get("tasks"), dict) else {}
    texts = " ".join(files.read_text(name) or "" for name in (entry, config_name) if name)
    det.framework = next((name for name, marker in _FRAMEWORKS if marker in texts), None)
    if isinstance(tasks.get("start"), str):
        det.run = "deno task start"
    elif entry is not None:
        det.run = f"deno run {PERMISSIONS} {entry}"
    else:
        det.fatal = "found no Deno entry file (main.ts, server.ts, src/index.ts...) and no start task in deno.json"
        return det
    if entry is not None:
        det.install = f"deno install --entrypoint {entry}"
    elif files.is_file("deno.lock") or config.get("imports"):
        det.install = "deno install"
    det.confidence, det.port = ENTRY_POINT, _port(files, entry) or DEFAULT_PORT
    return det


def _read_config(files: RepoFiles, name: str) -> dict:
    if name == "deno.json":
        return files.read_json(name) or {}
    text = files.read_text(name) or ""  # JSONC: drop whole-line comments, enough to find the tasks
    try:
        data = json.loads("\n".join(line for line in text.splitlines() if not line.strip().startswith("//")))
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def _version(files: RepoFiles) -> tuple[str | None, str | None]:
    for name in (".dvmrc", ".deno-version"):
        text = (files.read_text(name) or "").strip()
        if re.fullmatch(r"v?\d+(\.\d+){0,2}", text):
            return text.lstrip("v"), name
    tool = re.search(r"^deno\s+v?(\d+(?:\.\d+){0,2})\s*$", files.read_text(".tool-versions") or "", re.M)
    return (tool.group(1), ".tool-versions") if tool else (None, None)


def _port(files: RepoFiles, entry: str | None) -> int | None:
    text = files.read_text(entry) if entry else ""
    match = re.search(r"\bport\s*[:=]\s*(\d{2,5})\b|[\"'](\d{4,5})[\"']", text or "")
    port = int(next(filter(None, match.groups()))) if match else None
    return port if port and 0 < port < 65536 else None


def render(recipe: Recipe, files: RepoFiles) -> str:
    df = Dockerfile().stage(recipe.images["build"], "build")
    df.env(DENO_DIR=DENO_DIR)
    df.workdir("/app")
    df.copy_source()
    if recipe.install:
        df.run(recipe.install)
    if recipe.build:
        df.run(recipe.build)

    df.stage(recipe.images["run"])
    df.create_user()
    df.env(DENO_DIR=DENO_DIR, DENO_NO_UPDATE_CHECK=1, DENO_NO_PROMPT=1)
    # The fetched modules and the app belong to the user it runs as: deno writes to its cache
    # (and lockfile) when it starts.
    df.copy(DENO_DIR, DENO_DIR, from_stage="build", chown=True)
    df.copy("/app", "/app", from_stage="build", chown=True)  # before WORKDIR: see node.render
    df.workdir("/app")
    df.env(PORT=recipe.port)
    df.user().expose(recipe.port)
    if recipe.run:
        df.start(recipe.run)
    return df.text()
