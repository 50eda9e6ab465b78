"""Hugo sites: a Hugo configuration (hugo.toml, or config.toml/yaml/json with a site's keys) beside
content/, layouts/ or themes/. The site is generated with the hugo image (its theme, often a git
submodule, is in the checkout: see builds.services.steps.fetch) and public/ is served by the static
server stage, as a JavaScript front end's build output is.
"""

import re

from builds.dockerfile import webserver
from builds.dockerfile.files import RepoFiles
from builds.dockerfile.model import ENTRY_POINT, Detection, Recipe
from builds.dockerfile.writer import Dockerfile

DEFAULT_PORT = webserver.DEFAULT_PORT
CONFIG_FILES = ("hugo.toml", "hugo.yaml", "hugo.yml", "hugo.json", "config.toml", "config.yaml", "config.yml",
                "config.json")
SITE_DIRS = ("content", "layouts", "themes", "archetypes")
_SITE_KEYS = re.compile(r"(?im)^\s*\"?(baseurl|theme|title|languagecode)\"?\s*[:=]")
_MIN_VERSION = re.compile(r"(?im)^\s*\"?min\"?\s*[:=]\s*[\"']?v?(\d+\.\d+(?:\.\d+)?)")


def detect(files: RepoFiles, *, runtime: str | None = None) -> Detection | None:
    config = next((name for name in CONFIG_FILES if files.is_file(name)), None)
    if config is None:
        return None
    text = files.read_text(config) or ""
    site = any(files.is_dir(name) for name in SITE_DIRS)
    if not (config.startswith("hugo.") or runtime == "hugo" or (site and _SITE_KEYS.search(text))):
        return None
    det = Detection("hugo", ENTRY_POINT, framework="hugo", port=DEFAULT_PORT, static_dir="public")
    minimum = _MIN_VERSION.search(text) if "hugoversion" in text.lower() else None
    if minimum:
        det.version_request, det.version_source = f">={minimum.group(1)}", config
    det.build = "hugo --minify"
    return det


def render(recipe: Recipe, files: RepoFiles) -> str:
    df = Dockerfile().stage(recipe.images["build"], "build")
    df.workdir("/site")
    df.copy_source()
    if recipe.build:
        df.run(recipe.build)
    webserver.server_stage(df, recipe.static_image, recipe.port, from_stage="build", source="/site/public/",
                              spa=False)
    return df.text()
