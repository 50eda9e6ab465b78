"""Go modules: the main package to build, the Go version from go.mod, and a two-stage image
(static binary built with the module and build caches, run on a slim Debian with CA
certificates and a non-root user)."""

import re

from builds.dockerfile import versions
from builds.dockerfile.files import RepoFiles
from builds.dockerfile.model import ENTRY_POINT, PROJECT, Detection, Recipe
from builds.dockerfile.writer import Cache, Dockerfile

DEFAULT_PORT = 8080
FRAMEWORKS = (
    ("github.com/gin-gonic/gin", "gin"), ("github.com/labstack/echo", "echo"), ("github.com/gofiber/fiber", "fiber"),
    ("github.com/go-chi/chi", "chi"), ("github.com/gorilla/mux", "gorilla"), ("github.com/beego/beego", "beego"),
)
# Modules that need cgo (and so glibc at run time) to work at all.
CGO_MODULES = ("github.com/mattn/go-sqlite3", "github.com/confluentinc/confluent-kafka-go")
PREFERRED_COMMANDS = ("server", "api", "app", "web", "main")
_CACHES = (Cache("gomod", "/go/pkg/mod"), Cache("gobuild", "/root/.cache/go-build"))


def detect(files: RepoFiles, *, runtime: str | None = None) -> Detection | None:
    if not files.is_file("go.mod"):
        return None
    gomod = files.read_text("go.mod") or ""
    det = Detection("go", PROJECT, package_manager="go")
    version = re.search(r"^go\s+(\d+(?:\.\d+){1,2})\s*(?://.*)?$", gomod, re.M)
    toolchain = re.search(r"^toolchain\s+go(\d+(?:\.\d+){1,2})\s*(?://.*)?$", gomod, re.M)
    tool = versions.tool_versions(files.read_text(".tool-versions"), ("golang", "go"))
    if toolchain:  # the toolchain go.mod asks for, at least its go line
        det.version_request, det.version_source = f">={toolchain.group(1)}", "go.mod toolchain"
    elif version:
        det.version_request, det.version_source = f">={version.group(1)}", "go.mod"
    elif tool:
        det.version_request, det.version_source = tool, ".tool-versions"
    det.framework = next((name for module, name in FRAMEWORKS if module in gomod), None)
    det.hints["cgo"] = any(module in gomod for module in CGO_MODULES)
    vendored = files.is_file("vendor/modules.txt")
    det.install = None if vendored else "go mod download"
    det.hints["dependency_files"] = [name for name in ("go.mod", "go.sum") if files.is_file(name)]
    if re.search(r"^replace\s.*=>\s*\.\./", gomod, re.M) or re.search(r"=>\s*\.\./", gomod):
        det.warnings.append("go.mod replaces a module with a directory outside the app; set workingDir so "
                            "that directory is inside the build")
    package = main_package(files, gomod, det)
    if package is None:
        det.fatal = "found no main package (package main with func main) in the Go module; set buildCommand and runCommand"
        return det
    output = "bin/app" if files.is_dir("app") else "app"
    det.build, det.run = f"go build -o {output} {package}", f"./{output}"
    det.confidence, det.port = ENTRY_POINT, DEFAULT_PORT
    return det


def main_package(files: RepoFiles, gomod: str, det: Detection) -> str | None:
    mains = []
    for path in files.walk(".go", max_depth=4):
        if path.endswith("_test.go") or len(mains) > 50:
            continue
        text = files.read_text(path) or ""
        if re.search(r"^package\s+main\b", text, re.M) and re.search(r"^func\s+main\s*\(\s*\)", text, re.M):
            directory = path.rpartition("/")[0]
            if directory not in mains:
                mains.append(directory)
    if not mains:
        return None
    if "" in mains:
        return "."
    commands = [d for d in mains if d.startswith("cmd/") and d.count("/") == 1]
    pool = commands or mains
    module = re.search(r"^module\s+(\S+)", gomod, re.M)
    preferred = [module.group(1).rsplit("/", 1)[-1]] if module else []
    chosen = next((d for name in preferred + list(PREFERRED_COMMANDS) for d in pool if d.rsplit("/", 1)[-1] == name),
                  sorted(pool)[0])
    if len(pool) > 1:
        det.warnings.append(f"several main packages ({', '.join(sorted(pool))}); building ./{chosen}")
    return f"./{chosen}"


def render(recipe: Recipe, files: RepoFiles) -> str:
    cgo = recipe.hints.get("cgo", False)
    df = Dockerfile().stage(recipe.images["build"], "build")
    df.env(CGO_ENABLED="1" if cgo else "0", GOTOOLCHAIN="local", GOFLAGS="-trimpath")
    df.workdir("/app")
    needed = recipe.hints.get("dependency_files") or ["go.mod"]
    if recipe.install == "go mod download":
        df.copy(needed, "./")
        df.run(recipe.install, _CACHES[:1])
        df.copy_source()
    else:
        df.copy_source()
        if recipe.install:
            df.run(recipe.install, _CACHES)
    if recipe.build:
        df.run(recipe.build, _CACHES)

    df.stage(recipe.images["run"])
    df.create_user()
    df.copy("/etc/ssl/certs/ca-certificates.crt", "/etc/ssl/certs/ca-certificates.crt", from_stage="build")
    # The whole tree, not just the binary: many Go servers read templates and assets at run time.
    df.copy("/app", "/app", from_stage="build", chown=True)  # before WORKDIR: see node.render
    df.workdir("/app")
    df.env(PORT=recipe.port)
    df.user().expose(recipe.port)
    if recipe.run:
        df.start(recipe.run)
    return df.text()
