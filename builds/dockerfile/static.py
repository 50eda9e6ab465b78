"""Static sites: a directory with index.html served as it is, or, asked for with runtime
"static", a JavaScript project built into files; both served by nginx (webserver.py)."""

import dataclasses

from builds.dockerfile import node
from builds.dockerfile.files import RepoFiles
from builds.dockerfile.model import MARKER, Detection, Recipe
from builds.dockerfile.webserver import DEFAULT_PORT, server_stage
from builds.dockerfile.writer import Dockerfile

def detect(files: RepoFiles, *, runtime: str | None = None) -> Detection | None:
    """A plain site (index.html); asked for explicitly, also a JS project built into files."""
    if runtime == "static" and files.is_file("package.json"):
        built = node.detect(files)
        if built is not None and built.build and not built.fatal:
            det = Detection("static", MARKER, framework=built.framework or "static-frontend",
                            package_manager=built.package_manager, install=built.install, build=built.build,
                            port=DEFAULT_PORT, static_dir=built.static_dir or "dist", warnings=built.warnings)
            det.hints.update(built.hints, node_version_request=built.version_request,
                             node_version_source=built.version_source)
            return det
    if not files.is_file("index.html"):
        return None
    return Detection("static", MARKER, framework="static-site", port=DEFAULT_PORT, static_dir=".")


def render(recipe: Recipe, files: RepoFiles) -> str:
    if recipe.build and recipe.hints.get("node_image"):
        # A JS project built with Node, then served: the Node template does both stages.
        as_node = dataclasses.replace(recipe, images={"build": recipe.hints["node_image"]},
                                      static_image=recipe.images["run"])
        return node.render(as_node, files)
    df = Dockerfile()
    server_stage(df, recipe.images["run"], recipe.port, from_stage=None, source=".")
    return df.text()
