"""Compiled dependencies and package managers as projects pin them (issue 13).

The generated text is checked here; the library scan the build stage runs is run for real
against this machine's own Python extension modules (ldd and dpkg are Debian's, as in the
images). Real builds are the end-to-end tests' business.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from builds.dockerfile import native, plan_build
from builds.dockerfile.writer import Dockerfile


def write(root, files: dict) -> None:
    for name, content in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(content) if isinstance(content, dict) else content)


def generate(root, files: dict, config: dict | None = None):
    write(root, files)
    return plan_build(root, {"isAutoBuild": True, **(config or {})}, repo_root=root)


def stages(dockerfile: str) -> list[str]:
    return dockerfile.split("\n\nFROM ")


DJANGO_PSYCOPG2 = {
    "requirements.txt": "Django>=5\npsycopg2==2.9.10\ngunicorn\n",
    "manage.py": "os.environ.setdefault('DJANGO_SETTINGS_MODULE', 'site1.settings')\n",
    "site1/wsgi.py": "", "site1/settings.py": "",
}


# --- Python ------------------------------------------------------------------------------------

def test_python_builds_in_the_full_image_with_headers_and_runs_on_slim(tmp_path):
    build, run = stages(generate(tmp_path, DJANGO_PSYCOPG2).dockerfile)
    assert build.startswith("FROM python:3.14-bookworm AS build\n")
    assert run.startswith("python:3.14-slim-bookworm\n")
    # the full image has gcc and libpq-dev already: apt-get only where it lacks them
    assert "RUN dpkg -s gcc libc6-dev libpq-dev >/dev/null 2>&1 || { apt-get update" in build
    assert "gcc" not in run and "libpq-dev" not in run


def test_the_run_stage_gets_the_packages_of_the_libraries_the_venv_links_to(tmp_path):
    build, run = stages(generate(tmp_path, DJANGO_PSYCOPG2).dockerfile)
    lines = build.splitlines()
    scan = next(i for i, line in enumerate(lines) if "find /opt/venv -type f -name '*.so*' -exec ldd" in line)
    assert scan > next(i for i, line in enumerate(lines) if "pip install -r requirements.txt" in line)
    assert "printf '%s\\n' libpq5;" in lines[scan]  # known, even if ldd could not see it
    run_lines = run.splitlines()
    assert run_lines[1] == f"COPY --from=build {native.LIST} {native.LIST}"
    install = run_lines[2]
    assert install.startswith(f"RUN missing=''; for p in $(cat {native.LIST}); do dpkg -s")
    assert run_lines.index(install) < next(i for i, line in enumerate(run_lines) if line.startswith("USER "))


def test_the_library_scan_names_the_debian_packages_of_linked_libraries(tmp_path):
    """Runs the build stage's scan on a copy of this machine's _ssl extension module (it links
    libssl and libc, from Debian's libssl3 and libc6)."""
    ssl_module = Path(sys.base_prefix, "lib", f"python3.{sys.version_info.minor}", "lib-dynload")
    candidates = sorted(ssl_module.glob("_ssl.*.so")) or sorted(Path("/usr/lib").glob("python3*/lib-dynload/_ssl.*.so"))
    if not candidates:
        pytest.fail("no _ssl extension module on this machine to scan")
    venv = tmp_path / "venv" / "lib"
    venv.mkdir(parents=True)
    (venv / "_ssl.cpython.so").write_bytes(candidates[0].read_bytes())
    (venv / "README.so.txt").write_text("not an ELF file")
    df = Dockerfile()
    native.record_libraries(df, str(tmp_path / "venv"), "*.so*", ["libpq5"])
    script = df.lines[-1].removeprefix("RUN ").replace(native.LIST, str(tmp_path / "packages"))
    subprocess.run(["/bin/sh", "-c", script], check=True, timeout=300)
    packages = (tmp_path / "packages").read_text().split()
    assert "libc6" in packages and "libpq5" in packages
    assert any(p.startswith("libssl") for p in packages), packages


# --- Node and Ruby -----------------------------------------------------------------------------

def test_a_node_gyp_addon_gets_build_tools_and_its_libraries_in_the_run_stage(tmp_path):
    plan = generate(tmp_path, {"package.json": {"scripts": {"start": "node a.js"}, "dependencies": {"bcrypt": "5"}},
                               "package-lock.json": "{}", "a.js": ""})
    build, run = stages(plan.dockerfile)
    tools = build.index("RUN dpkg -s g++ make python3 >/dev/null 2>&1 || { apt-get update")
    assert tools < build.index("npm ci")
    assert "find /app -type f -name '*.node' -exec ldd" in build
    assert f"COPY --from=build {native.LIST} {native.LIST}" in run


def test_an_addon_known_only_from_the_lockfile_counts_too(tmp_path):
    plan = generate(tmp_path, {"package.json": {"scripts": {"start": "node a.js"}, "dependencies": {"x": "1"}},
                               "yarn.lock": '"better-sqlite3@^11.0.0":\n  version "11.0.0"\n', "a.js": ""})
    assert "g++ make python3" in plan.dockerfile


def test_a_node_app_without_addons_installs_no_build_tools(tmp_path):
    plan = generate(tmp_path, {"package.json": {"scripts": {"start": "node a.js"}, "dependencies": {"express": "4"}},
                               "package-lock.json": "{}", "a.js": ""})
    assert "apt-get" not in plan.dockerfile and "ldd" not in plan.dockerfile


def test_ruby_gem_extensions_bring_their_libraries_to_the_run_stage(tmp_path):
    plan = generate(tmp_path, {"Gemfile": 'gem "pg"\ngem "puma"\ngem "sinatra"\n', "Gemfile.lock": "", "config.ru": ""})
    build, run = stages(plan.dockerfile)
    assert "printf '%s\\n' libpq5; find /usr/local/bundle -type f -name '*.so' -exec ldd" in build
    assert f"COPY --from=build {native.LIST} {native.LIST}" in run


# --- package managers ---------------------------------------------------------------------------

def node_app(tmp_path, package: dict, **files):
    return generate(tmp_path, {"package.json": {"scripts": {"start": "node a.js"}, **package}, "a.js": "", **files})


def test_yarn_classic_comes_from_the_image_without_corepack(tmp_path):
    plan = node_app(tmp_path, {}, **{"yarn.lock": ""})
    assert "corepack" not in plan.dockerfile
    assert "{ command -v yarn >/dev/null || npm install -g --prefix /opt/pm yarn@1; }" in plan.dockerfile


def test_a_pinned_yarn_classic_is_installed_only_when_the_image_has_no_yarn(tmp_path):
    plan = node_app(tmp_path, {"packageManager": "yarn@1.22.22+sha512.a6b2f7906b721bba3d67d4aff083df04dad64c39970784"},
                    **{"yarn.lock": ""})
    assert "{ command -v yarn >/dev/null || npm install -g --prefix /opt/pm yarn@1.22.22; }" in plan.dockerfile


def test_a_pinned_pnpm_is_installed_at_that_version_unless_the_image_has_it(tmp_path):
    plan = node_app(tmp_path, {"packageManager": "pnpm@9.12.3+sha512.cce0f9de9c5a7c95bef944169cc5dfe8741abfb14507"},
                    **{"pnpm-lock.yaml": "lockfileVersion: '9.0'\n"})
    assert ('{ [ "$(pnpm --version 2>/dev/null)" = 9.12.3 ] || npm install -g --prefix /opt/pm pnpm@9.12.3; }'
            in plan.dockerfile)
    assert "corepack" not in plan.dockerfile


@pytest.mark.parametrize("lock_version, pnpm", [("9.0", "10"), ("6.0", "8"), ("5.4", "7")])
def test_pnpm_without_a_pin_follows_the_lockfile_version(tmp_path, lock_version, pnpm):
    plan = node_app(tmp_path, {}, **{"pnpm-lock.yaml": f"lockfileVersion: '{lock_version}'\n"})
    assert f"{{ command -v pnpm >/dev/null || npm install -g --prefix /opt/pm pnpm@{pnpm}; }}" in plan.dockerfile


def test_yarn_berry_with_a_committed_release_runs_it_through_the_image_yarn(tmp_path):
    plan = node_app(tmp_path, {"packageManager": "yarn@4.5.1"},
                    **{"yarn.lock": "", ".yarnrc.yml": "yarnPath: .yarn/releases/yarn-4.5.1.cjs\n",
                       ".yarn/releases/yarn-4.5.1.cjs": ""})
    assert "@yarnpkg/cli-dist" not in plan.dockerfile and "corepack" not in plan.dockerfile
    assert "COPY .yarn/releases .yarn/releases/" in plan.dockerfile


def test_yarn_berry_without_a_committed_release_comes_from_the_registry_at_its_pin(tmp_path):
    plan = node_app(tmp_path, {"packageManager": "yarn@4.5.1+sha224.8a26bd3f5e4b"},
                    **{"yarn.lock": "", ".yarnrc.yml": "nodeLinker: node-modules\n"})
    build, run = stages(plan.dockerfile)
    assert "RUN --mount=type=cache,id=${HUBFLY_CACHE_ID}-npm,target=/root/.npm mkdir -p /opt/pm && " \
           "npm install -g --prefix /opt/pm @yarnpkg/cli-dist@4.5.1" in build
    assert build.index("@yarnpkg/cli-dist") < build.index("yarn install --immutable")
    assert "COPY --from=build /opt/pm /opt/pm" in run and run.rstrip().endswith('CMD ["yarn", "start"]')


def test_a_package_manager_pin_with_shell_characters_is_ignored(tmp_path):
    plan = node_app(tmp_path, {"packageManager": "pnpm@9;id"}, **{"pnpm-lock.yaml": "lockfileVersion: '9.0'\n"})
    assert "9;id" not in plan.dockerfile
    assert "pnpm@10" in plan.dockerfile


def test_a_front_end_with_an_addon_gets_build_tools_before_it_is_served_as_files(tmp_path):
    plan = generate(tmp_path, {"package.json": {"scripts": {"build": "vite build"},
                                                "devDependencies": {"vite": "5", "node-sass": "9"}},
                               "package-lock.json": "{}", "index.html": "", "vite.config.js": ""})
    build, served = stages(plan.dockerfile)
    assert "g++ make python3" in build and build.index("g++ make python3") < build.index("npm ci")
    assert "apt-get" not in served
