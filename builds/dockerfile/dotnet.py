""".NET (ASP.NET Core) projects: restore with only the project files copied (cached layer),
publish with the SDK image, run the published DLL on the ASP.NET runtime image."""

import re

from builds.dockerfile.files import RepoFiles
from builds.dockerfile.model import ENTRY_POINT, PROJECT, Detection, Recipe
from builds.dockerfile.writer import Cache, Dockerfile

DEFAULT_PORT = 8080
RESTORE_FILES = ("global.json", "NuGet.Config", "nuget.config", "Directory.Build.props",
                 "Directory.Build.targets", "Directory.Packages.props")
_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")


def detect(files: RepoFiles, *, runtime: str | None = None) -> Detection | None:
    projects = [name for name in files.list_dir() if name.endswith((".csproj", ".fsproj")) and files.is_file(name)]
    if not projects:
        return None
    texts = {name: files.read_text(name) or "" for name in projects}
    project = next((n for n in projects if "Microsoft.NET.Sdk.Web" in texts[n]), projects[0])
    text = texts[project]
    det = Detection("dotnet", PROJECT, package_manager="nuget",
                    framework="aspnet-core" if "Microsoft.NET.Sdk.Web" in text else None)
    target = re.search(r"<TargetFrameworks?>\s*net(\d+\.\d+)", text)
    sdk = re.search(r'"version"\s*:\s*"(\d+\.\d+)', files.read_text("global.json") or "")
    if target:
        det.version_request, det.version_source = target.group(1), project
    elif sdk:
        det.version_request, det.version_source = sdk.group(1), "global.json"
    assembly = re.search(r"<AssemblyName>\s*([^<\s]+)\s*</AssemblyName>", text)
    name = assembly.group(1) if assembly else project.rsplit(".", 1)[0]
    if not _NAME.fullmatch(name) or not _NAME.fullmatch(project):
        det.fatal = f"the project name {name!r} has characters the generated Dockerfile cannot use; set runCommand"
        return det
    det.install = "dotnet restore"
    det.build = "dotnet publish -c Release -o out"
    det.run = f"dotnet {name}.dll"
    det.hints["project_files"] = [project] + [n for n in RESTORE_FILES if files.is_file(n)]
    det.confidence, det.port = ENTRY_POINT, DEFAULT_PORT
    return det


def render(recipe: Recipe, files: RepoFiles) -> str:
    caches = (Cache("nuget", "/root/.nuget/packages"),)
    df = Dockerfile().stage(recipe.images["build"], "build")
    df.env(DOTNET_CLI_TELEMETRY_OPTOUT="1", DOTNET_NOLOGO="1")
    df.workdir("/src")
    restore_first = recipe.install == "dotnet restore"
    df.install_and_copy_source(recipe.install, recipe.hints.get("project_files") if restore_first else None, caches)
    if recipe.build:
        df.run(recipe.build, caches)

    df.stage(recipe.images["run"])
    df.create_user()
    df.copy("/src/out/", "/app/", from_stage="build", chown=True)  # before WORKDIR: see node.render
    df.workdir("/app")
    df.env(PORT=recipe.port, ASPNETCORE_HTTP_PORTS=recipe.port, DOTNET_CLI_TELEMETRY_OPTOUT="1")
    df.user().expose(recipe.port)
    if recipe.run:
        df.start(recipe.run)
    return df.text()
