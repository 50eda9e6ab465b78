"""Generated Dockerfiles: production properties (stages, layer order, caches, user, start
command, port) and base images taken from runtimes.json.

Pure unit tests over the text; the real builds of these Dockerfiles are end-to-end tests.
"""

import json
import re

import pytest

from builds import errors
from builds.dockerfile import load_runtimes, plan_build
from builds.dockerfile.runtimes import parse_runtimes
from builds.dockerfile.writer import start_command
from builds.errors import UserError
from hubfly.env import ConfigError

INSTRUCTIONS = {"FROM", "RUN", "COPY", "ENV", "WORKDIR", "USER", "EXPOSE", "CMD", "ARG", "ENTRYPOINT"}


def write(root, files: dict) -> None:
    for name, content in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(content) if isinstance(content, dict) else content)


def generate(root, files: dict, config: dict | None = None, **kwargs):
    write(root, files)
    return plan_build(root, {"isAutoBuild": True, **(config or {})}, repo_root=root, **kwargs)


def instructions(dockerfile: str) -> list[str]:
    """The instruction lines, here-document bodies left out."""
    lines, heredoc = [], None
    for line in dockerfile.splitlines():
        if heredoc:
            heredoc = None if line == heredoc else heredoc
            continue
        if line.strip():
            lines.append(line)
            match = re.search(r"<<'(\w+)'", line)
            heredoc = match.group(1) if match else None
    return lines


def final_stage(dockerfile: str) -> list[str]:
    lines = instructions(dockerfile)
    start = max(i for i, line in enumerate(lines) if line.startswith("FROM "))
    return lines[start:]


def index_of(lines: list[str], prefix: str) -> int:
    return next(i for i, line in enumerate(lines) if line.startswith(prefix) or prefix in line)


NODE_SERVER = {"package.json": {"scripts": {"build": "tsc", "start": "node dist/index.js"},
                                "dependencies": {"express": "4"}, "devDependencies": {"typescript": "5"}},
               "package-lock.json": "{}", "src/index.ts": ""}
VITE = {"package.json": {"scripts": {"build": "vite build"}, "devDependencies": {"vite": "5"}},
        "package-lock.json": "{}", "index.html": ""}
DJANGO = {"requirements.txt": "Django\ngunicorn\npsycopg2==2.9\n", "manage.py": "'DJANGO_SETTINGS_MODULE', 'site.settings'",
          "site/wsgi.py": "", "site/settings.py": ""}
GO = {"go.mod": "module x\n\ngo 1.22\n", "go.sum": "", "main.go": "package main\nfunc main() {}\n"}
LAYOUTS = {
    "node": NODE_SERVER, "vite": VITE, "django": DJANGO, "go": GO, "static": {"index.html": ""},
    "fastapi": {"requirements.txt": "fastapi\nuvicorn\n", "main.py": "app = FastAPI()\n"},
    "bun": {"package.json": {"scripts": {"start": "bun run index.ts"}}, "bun.lock": "", "index.ts": ""},
    "rust": {"Cargo.toml": '[package]\nname = "svc"\n', "Cargo.lock": "", "src/main.rs": ""},
    "java": {"pom.xml": "<project></project>"},
    "dotnet": {"Api.csproj": '<Project Sdk="Microsoft.NET.Sdk.Web"><TargetFramework>net8.0</TargetFramework></Project>'},
    "php": {"composer.json": {"require": {"slim/slim": "4"}}, "public/index.php": ""},
    "ruby": {"Gemfile": 'gem "sinatra"\ngem "puma"\n', "Gemfile.lock": "", "config.ru": ""},
}


@pytest.fixture(params=sorted(LAYOUTS))
def any_plan(request, tmp_path):
    return request.param, generate(tmp_path, LAYOUTS[request.param])


def test_every_generated_dockerfile_is_well_formed(any_plan):
    name, plan = any_plan
    assert not plan.dockerfile.startswith("# syntax")
    assert "# syntax=" not in plan.dockerfile
    for line in instructions(plan.dockerfile):
        assert line.split(" ", 1)[0] in INSTRUCTIONS, line
    start = [line for line in instructions(plan.dockerfile) if line.startswith("CMD ")]
    assert len(start) == 1
    argv = json.loads(start[0][4:])
    assert isinstance(argv, list) and all(isinstance(a, str) for a in argv)


def test_every_final_stage_exposes_the_port_and_sets_port(any_plan):
    name, plan = any_plan
    final = final_stage(plan.dockerfile)
    assert f"EXPOSE {plan.expose_port}" in final
    assert any(line.startswith("ENV ") and f"PORT={plan.expose_port}" in line for line in final)


def test_every_final_stage_runs_as_a_non_root_user(any_plan):
    name, plan = any_plan
    users = [line for line in final_stage(plan.dockerfile) if line.startswith("USER ")]
    assert users and users[-1] in ("USER app", "USER www-data")


def test_every_cache_mount_is_namespaced_by_the_cache_id_argument(any_plan):
    name, plan = any_plan
    for line in instructions(plan.dockerfile):
        for mount in re.findall(r"--mount=type=cache,[^ ]+", line):
            assert "id=${HUBFLY_CACHE_ID}-" in mount
    if "--mount=type=cache" in plan.dockerfile:
        assert "ARG HUBFLY_CACHE_ID=default" in plan.dockerfile


def test_every_base_image_comes_from_runtimes_json(any_plan):
    name, plan = any_plan
    known = {image for runtime in load_runtimes().runtimes.values() for roles in runtime.images.values()
             for image in roles.values()}
    for line in instructions(plan.dockerfile):
        if line.startswith("FROM "):
            assert line.split()[1] in known


def test_the_checkout_git_directory_is_never_copied_into_an_image(any_plan):
    name, plan = any_plan
    for line in instructions(plan.dockerfile):
        if line.startswith("COPY ") and "--from=" not in line and " . " in f"{line} ":
            assert "--exclude=.git" in line, line


def test_node_dependencies_install_before_the_source_is_copied(tmp_path):
    lines = instructions(generate(tmp_path, NODE_SERVER).dockerfile)
    manifests = index_of(lines, "COPY package.json package-lock.json ./")
    install = index_of(lines, "RUN --mount=type=cache,id=${HUBFLY_CACHE_ID}-npm,target=/root/.npm { { npm ci 2>&1;")
    source = index_of(lines, "COPY --exclude=.git . .")
    assert manifests < install < source < index_of(lines, "RUN npm run build")


def test_node_server_drops_dev_dependencies_and_runs_in_production_mode(tmp_path):
    plan = generate(tmp_path, NODE_SERVER)
    assert "npm prune --omit=dev" in plan.dockerfile
    final = final_stage(plan.dockerfile)
    assert final[0] == "FROM node:26-bookworm-slim"
    assert "COPY --from=build --chown=app:app /app /app" in final
    assert "ENV NODE_ENV=production HOST=0.0.0.0 PORT=3000" in final
    assert final[-1] == 'CMD ["npm", "start"]'


def test_dev_dependencies_are_kept_when_the_start_script_needs_one(tmp_path):
    plan = generate(tmp_path, {"package.json": {"scripts": {"start": "ts-node src/index.ts"},
                                                "devDependencies": {"ts-node": "10"}}, "package-lock.json": "{}"})
    assert "prune" not in plan.dockerfile


def test_lifecycle_scripts_get_the_source_before_the_install(tmp_path):
    files = {**NODE_SERVER, "package.json": {"scripts": {"postinstall": "node scripts/setup.js", "start": "node a.js"}}}
    lines = instructions(generate(tmp_path, files).dockerfile)
    assert index_of(lines, "COPY --exclude=.git . .") < index_of(lines, "npm ci")
    assert not any(line.startswith("COPY package.json") for line in lines)


def test_vite_app_builds_in_node_and_ships_only_the_files_on_a_static_server(tmp_path):
    plan = generate(tmp_path, VITE)
    lines = instructions(plan.dockerfile)
    assert lines[0] == "FROM node:26-bookworm-slim AS build"
    final = final_stage(plan.dockerfile)
    assert final[0] == "FROM nginx:1.28-bookworm"
    assert "COPY --from=build /app/dist/ /srv/www/" in final
    assert final[-1] == 'CMD ["nginx", "-c", "/etc/hubfly/nginx.conf", "-e", "stderr", "-g", "daemon off;"]'
    assert "listen 8080;" in plan.dockerfile
    assert "try_files $uri $uri/ /index.html;" in plan.dockerfile  # single-page app fallback
    assert "node" not in " ".join(final)


def test_static_server_config_hides_dot_files_and_runs_unprivileged(tmp_path):
    plan = generate(tmp_path, {"index.html": ""}, {"exposePort": 9090})
    assert "listen 9090;" in plan.dockerfile and "EXPOSE 9090" in plan.dockerfile
    assert "location ~ /\\.(?!well-known/)" in plan.dockerfile
    assert "pid /tmp/nginx.pid;" in plan.dockerfile
    assert "try_files $uri $uri/ =404;" in plan.dockerfile
    assert "COPY --exclude=.git . /srv/www/" in plan.dockerfile


def test_python_installs_into_a_virtualenv_and_ships_it_to_a_slim_stage(tmp_path):
    plan = generate(tmp_path, DJANGO)
    lines = instructions(plan.dockerfile)
    assert index_of(lines, "COPY requirements.txt ./") < index_of(lines, "pip install -r requirements.txt") \
        < index_of(lines, "COPY --exclude=.git . .")
    assert "RUN python -m venv /opt/venv" in lines
    assert "--mount=type=cache,id=${HUBFLY_CACHE_ID}-pip,target=/root/.cache/pip" in plan.dockerfile
    final = final_stage(plan.dockerfile)
    assert "COPY --from=build /opt/venv /opt/venv" in final
    assert final[-1] == '["/bin/sh", "-c", "exec gunicorn site.wsgi:application --bind 0.0.0.0:${PORT:-8000}"]' \
        .join(["CMD ", ""])


def test_compilers_stay_in_the_build_stage(tmp_path):
    """Facts 13.23: the Go original installed build toolchains in the run stage too."""
    plan = generate(tmp_path, DJANGO)
    build, final = plan.dockerfile.split("\nFROM python:3.14-slim-bookworm\n")
    assert build.startswith("FROM python:3.14-bookworm AS build\n")
    assert "libpq-dev" in build and "gcc" in build
    assert "libpq-dev" not in final and "gcc" not in final
    assert "printf '%s\\n' libpq5; find /opt/venv" in build  # the run stage installs it


def test_python_without_compiled_dependencies_installs_no_system_packages(tmp_path):
    plan = generate(tmp_path, LAYOUTS["fastapi"])
    build, final = plan.dockerfile.split("\nFROM python:3.14-slim-bookworm\n")
    assert "apt-get" not in build
    assert "printf" not in build  # no known library: the run stage installs only what ldd finds


def test_a_custom_install_command_gets_the_whole_source_first(tmp_path):
    plan = generate(tmp_path, {**LAYOUTS["fastapi"], "requirements/prod.txt": "fastapi\n"},
                    {"prebuildCommand": "pip install -r requirements/prod.txt"})
    lines = instructions(plan.dockerfile)
    assert index_of(lines, "COPY --exclude=.git . .") < index_of(lines, "pip install -r requirements/prod.txt")


def test_go_builds_a_static_binary_with_module_and_build_caches(tmp_path):
    plan = generate(tmp_path, GO)
    lines = instructions(plan.dockerfile)
    assert "ENV CGO_ENABLED=0 GOTOOLCHAIN=local GOFLAGS=-trimpath" in lines
    assert index_of(lines, "COPY go.mod go.sum ./") < index_of(lines, "go mod download") \
        < index_of(lines, "COPY --exclude=.git . .")
    build = next(line for line in lines if line.endswith("go build -o app ."))
    assert "target=/go/pkg/mod" in build and "target=/root/.cache/go-build" in build
    final = final_stage(plan.dockerfile)
    assert final[0] == "FROM debian:bookworm-slim"
    assert "COPY --from=build /etc/ssl/certs/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt" in final
    assert final[-1] == 'CMD ["./app"]'


def test_go_with_cgo_dependencies_keeps_cgo(tmp_path):
    plan = generate(tmp_path, {**GO, "go.mod": "module x\n\ngo 1.22\n\nrequire github.com/mattn/go-sqlite3 v1.14.0\n"})
    assert "CGO_ENABLED=1" in plan.dockerfile


def test_plain_rust_copies_the_source_before_building(tmp_path):
    """Facts 13.23: the Go original's plain-Rust template built before copying the source."""
    plan = generate(tmp_path, LAYOUTS["rust"])
    lines = instructions(plan.dockerfile)
    assert index_of(lines, "COPY --exclude=.git . .") < index_of(lines, "cargo build --release --locked")
    assert "recipe.json" not in plan.dockerfile
    assert "cp target/release/svc /app/app" in plan.dockerfile


def test_a_yarn_berry_run_command_brings_the_package_manager_into_the_run_stage(tmp_path):
    plan = generate(tmp_path, {"package.json": {"packageManager": "yarn@4.1.0", "scripts": {"start": "node a.js"}},
                               "yarn.lock": "", ".yarnrc.yml": ""})
    final = final_stage(plan.dockerfile)
    assert "COPY --from=build /opt/pm /opt/pm" in final
    assert 'ENV PATH="/opt/pm/bin:$PATH"' in final
    assert "corepack" not in plan.dockerfile
    assert final[-1] == 'CMD ["yarn", "start"]'


def test_base_images_are_read_from_the_runtimes_file(tmp_path):
    runtimes = parse_runtimes({"node": {"default": "7", "versions": {"7": {
        "build": "registry.example:5000/tools/node-build:7", "run": "registry.example:5000/tools/node-run:7"}}}},
        "test-runtimes.json")
    plan = generate(tmp_path, NODE_SERVER, runtimes=runtimes)
    assert plan.dockerfile.startswith("FROM registry.example:5000/tools/node-build:7 AS build\n")
    assert "\nFROM registry.example:5000/tools/node-run:7\n" in plan.dockerfile
    assert plan.base_image == "registry.example:5000/tools/node-run:7"


def test_a_runtime_missing_from_the_runtimes_file_is_unsupported(tmp_path):
    runtimes = parse_runtimes({"go": {"default": "1.24", "versions": {"1.24": {"build": "g", "run": "d"}}}}, "r.json")
    with pytest.raises(UserError) as caught:
        generate(tmp_path, NODE_SERVER, runtimes=runtimes)
    assert caught.value.code == errors.UNSUPPORTED_RUNTIME


@pytest.mark.parametrize("data, message", [
    ({"node": {"default": "22", "versions": {}}}, "expected"),
    ({"node": {"default": "20", "versions": {"22": {"build": "a", "run": "b"}}}}, "default"),
    ({"node": {"default": "22", "versions": {"22": {"build": "a"}}}}, "role 'run'"),
    ({"node": {"default": "22", "versions": {"22": {"build": "a b", "run": "b"}}}}, "image reference"),
    ({"node": {"default": "22", "versions": {"22": {"build": "a\nRUN x", "run": "b"}}}}, "image reference"),
    ({"cobol": {"default": "1", "versions": {"1": {"run": "x"}}}}, "unknown runtime"),
])
def test_a_malformed_runtimes_file_is_an_operator_error_naming_the_file(data, message):
    with pytest.raises(ConfigError, match=message) as caught:
        parse_runtimes(data, "/etc/hubfly/runtimes.json")
    assert "/etc/hubfly/runtimes.json" in str(caught.value)


def test_the_runtimes_file_comes_from_settings(tmp_path, settings):
    path = tmp_path / "runtimes.json"
    path.write_text(json.dumps({"static": {"default": "1", "versions": {"1": {"run": "example/web:1"}}}}))
    settings.RUNTIMES_FILE = path
    assert load_runtimes().names() == ["static"]
    broken = tmp_path / "broken-runtimes.json"
    broken.write_text("{broken")
    with pytest.raises(ConfigError, match="broken-runtimes.json is not valid JSON"):
        load_runtimes(broken)


@pytest.mark.parametrize("command, expected", [
    ("npm start", ["npm", "start"]),
    ("node dist/server.js", ["node", "dist/server.js"]),
    ("gunicorn app:app --workers=4", ["gunicorn", "app:app", "--workers=4"]),
    ("uvicorn main:app --port ${PORT:-8000}", ["/bin/sh", "-c", "exec uvicorn main:app --port ${PORT:-8000}"]),
    ("MIX_ENV=prod mix phx.server", ["/bin/sh", "-c", "exec env MIX_ENV=prod mix phx.server"]),
    ("A=1 B=2 ./app", ["/bin/sh", "-c", "exec env A=1 B=2 ./app"]),
    ("npm run migrate && npm start", ["/bin/sh", "-c", "npm run migrate && exec npm start"]),
    ("php-fpm -D && exec nginx -g 'daemon off;'", ["/bin/sh", "-c", "php-fpm -D && exec nginx -g 'daemon off;'"]),
])
def test_start_commands_use_exec_form_or_a_correct_shell_exec(command, expected):
    """Facts 13.23: `exec VAR=value cmd` is not valid shell; leading assignments go through env."""
    assert json.loads(start_command(command)) == expected


def test_asking_for_bun_on_an_npm_project_installs_with_bun(tmp_path):
    plan = generate(tmp_path, NODE_SERVER, {"runtime": "bun"})
    assert (plan.runtime, plan.install_command) == ("bun", "bun install")
    assert plan.dockerfile.startswith("FROM oven/bun:1.4 AS build\n")


def test_ruby_without_a_lockfile_is_not_installed_in_deployment_mode(tmp_path):
    plan = generate(tmp_path, {"Gemfile": 'gem "sinatra"\n', "config.ru": ""})
    assert "BUNDLE_DEPLOYMENT" not in plan.dockerfile
    assert "COPY --exclude=.git . .\nRUN bundle install" in plan.dockerfile
