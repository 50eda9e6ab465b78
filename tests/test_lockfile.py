"""Lockfile drift (issue 13): a frozen install whose lockfile no longer matches its manifest
installs again without the lock and leaves a warning; buildConfig.strictLockfile keeps the
frozen install alone.

The generated text is checked per package manager, and the generated step itself is run by a
real /bin/sh with small stand-ins for the package managers on PATH (the real tools and their
registries are the end-to-end test's business: tests/test_zeroconfig.py).
"""

import json
import subprocess

import pytest

from builds import errors
from builds.dockerfile import lockfile, plan_build
from builds.errors import UserError

APPS = {
    "npm": ({"package.json": {"scripts": {"start": "node a.js"}}, "package-lock.json": "{}", "a.js": ""},
            "npm ci", "npm install"),
    "yarn": ({"package.json": {"scripts": {"start": "node a.js"}}, "yarn.lock": "", "a.js": ""},
             "yarn install --frozen-lockfile", "yarn install"),
    "yarn-berry": ({"package.json": {"packageManager": "yarn@4.5.1", "scripts": {"start": "node a.js"}},
                    "yarn.lock": "", ".yarnrc.yml": "", "a.js": ""},
                   "yarn install --immutable", "yarn install --no-immutable"),
    "pnpm": ({"package.json": {"scripts": {"start": "node a.js"}}, "pnpm-lock.yaml": "lockfileVersion: '9.0'\n",
              "a.js": ""}, "pnpm install --frozen-lockfile", "pnpm install --no-frozen-lockfile"),
    "bun": ({"package.json": {"scripts": {"start": "bun run index.ts"}}, "bun.lock": "", "index.ts": ""},
            "bun install --frozen-lockfile", "bun install"),
    "cargo": ({"Cargo.toml": '[package]\nname = "svc"\n', "Cargo.lock": "", "src/main.rs": ""},
              "cargo build --release --locked", "cargo build --release"),
    "composer": ({"composer.json": {"require": {"slim/slim": "4"}}, "composer.lock": "{}", "public/index.php": ""},
                 "composer install --no-dev", "composer update --no-dev"),
    "bundler": ({"Gemfile": 'gem "sinatra"\ngem "puma"\n', "Gemfile.lock": "", "config.ru": ""},
                "bundle install", "BUNDLE_DEPLOYMENT=false BUNDLE_FROZEN=false bundle install"),
    "uv": ({"pyproject.toml": '[project]\nname = "x"\ndependencies = ["flask", "gunicorn"]\n', "uv.lock": "",
            "app.py": "from flask import Flask\napp = Flask(__name__)\n"},
           "uv sync --locked --no-dev --no-install-project", "uv sync --no-dev --no-install-project"),
    "poetry": ({"pyproject.toml": '[tool.poetry]\nname = "x"\n'
                                  '[tool.poetry.dependencies]\nflask = "*"\ngunicorn = "*"\n',
                "poetry.lock": "", "app.py": "from flask import Flask\napp = Flask(__name__)\n"},
               "poetry install --only main", "poetry lock --no-update || poetry lock; } && poetry install --only main"),
}


def write(root, files: dict) -> None:
    for name, content in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(content) if isinstance(content, dict) else content)


def generate(root, files: dict, config: dict | None = None):
    write(root, files)
    return plan_build(root, {"isAutoBuild": True, **(config or {})}, repo_root=root)


def install_step(dockerfile: str, strict: str) -> str:
    """The shell command of the RUN line holding the frozen install, cache mounts left out."""
    line = next(line for line in dockerfile.splitlines() if line.startswith("RUN ") and strict in line)
    words = line.removeprefix("RUN ").split(" ")
    while words[0].startswith("--mount="):
        words.pop(0)
    return " ".join(words)


@pytest.mark.parametrize("manager", sorted(APPS))
def test_a_frozen_install_falls_back_to_an_unlocked_one_with_a_warning(tmp_path, manager):
    files, strict, relaxed = APPS[manager]
    step = install_step(generate(tmp_path, files).dockerfile, strict)
    printf = step.index("printf 'hubfly-%s: %s\\n' warning")
    assert step.index(strict) < step.index("grep -qE") < printf < step.index(relaxed, printf)


@pytest.mark.parametrize("manager", sorted(APPS))
def test_strict_lockfile_keeps_the_frozen_install_alone(tmp_path, manager):
    files, strict, _ = APPS[manager]
    dockerfile = generate(tmp_path, files, {"strictLockfile": True}).dockerfile
    assert strict in dockerfile
    assert "hubfly-install" not in dockerfile and "printf" not in dockerfile


def test_an_install_without_a_lockfile_is_not_wrapped(tmp_path):
    dockerfile = generate(tmp_path, {"Gemfile": 'gem "sinatra"\n', "config.ru": ""}).dockerfile
    assert "RUN bundle install" in dockerfile and "hubfly-install" not in dockerfile


def test_a_submitted_frozen_install_is_left_as_submitted(tmp_path):
    files, _, _ = APPS["pnpm"]
    write(tmp_path, {"package-lock.json": "{}"})
    dockerfile = generate(tmp_path, files, {"installCommand": "npm ci"}).dockerfile
    assert "npm ci" in dockerfile and "hubfly-install" not in dockerfile


@pytest.mark.parametrize("value", ["true", 1, None, []])
def test_strict_lockfile_must_be_a_boolean(tmp_path, value):
    files, _, _ = APPS["npm"]
    with pytest.raises(UserError) as caught:
        generate(tmp_path, files, {"strictLockfile": value})
    assert caught.value.code == errors.INVALID_BUILD_CONFIG and "strictLockfile" in caught.value.message


def test_the_dockerfile_never_holds_the_marker_itself(tmp_path):
    """BuildKit echoes each RUN line into the log: the marker must appear only when printed."""
    files, _, _ = APPS["npm"]
    assert lockfile.MARKER not in generate(tmp_path, files).dockerfile


# --- the generated step, run by /bin/sh ---------------------------------------------------------

STAND_IN = """#!/bin/sh
echo "$0 $*" >> "$CALLS"
case "$0 $*" in
  *" ci") echo "$NPM_CI_OUTPUT"; exit "$NPM_CI_STATUS" ;;
  *) echo "installed"; exit 0 ;;
esac
"""


def run_step(tmp_path, ci_output: str, ci_status: int) -> tuple[subprocess.CompletedProcess, list[str]]:
    files, strict, _ = APPS["npm"]
    step = install_step(generate(tmp_path / "app", files).dockerfile, strict)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "npm").write_text(STAND_IN)
    (bin_dir / "npm").chmod(0o755)
    calls = tmp_path / "calls"
    calls.touch()
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "CALLS": str(calls), "NPM_CI_OUTPUT": ci_output,
           "NPM_CI_STATUS": str(ci_status)}
    result = subprocess.run(["/bin/sh", "-c", step], env=env, capture_output=True, text=True, timeout=60)
    return result, [line.split(" ", 1)[1] for line in calls.read_text().splitlines()]


def test_drift_reported_by_npm_ci_installs_again_and_prints_the_warning(tmp_path):
    drift = ("npm error `npm ci` can only install packages when your package.json and package-lock.json "
             "or npm-shrinkwrap.json are in sync. Please update your lock file with `npm install`")
    result, calls = run_step(tmp_path, drift, 1)
    assert result.returncode == 0, result.stderr
    assert calls == ["ci", "install"]
    warnings = [w for line in result.stdout.splitlines() if (w := lockfile.warnings_in(line))]
    assert warnings == ["lockfile package-lock.json does not match the manifest; installed without it (commit an "
                        "updated lockfile, or set buildConfig.strictLockfile to fail instead)"]


def test_any_other_failure_of_the_frozen_install_fails_the_step_with_its_status(tmp_path):
    result, calls = run_step(tmp_path, "npm error network request to the registry failed", 7)
    assert result.returncode == 7
    assert calls == ["ci"]
    assert lockfile.MARKER not in result.stdout


def test_a_frozen_install_that_succeeds_runs_once_and_warns_nothing(tmp_path):
    result, calls = run_step(tmp_path, "added 1 package", 0)
    assert result.returncode == 0 and calls == ["ci"]
    assert lockfile.MARKER not in result.stdout


@pytest.mark.parametrize("line, warning", [
    ("#9 3.215 hubfly-warning: lockfile yarn.lock does not match", "lockfile yarn.lock does not match"),
    ("hubfly-warning: x", "x"),
    ("#9 [build 4/6] RUN { { npm ci 2>&1; ... printf 'hubfly-%s: %s\\n' warning 'lockfile'", None),
    ("#9 3.2 npm warn deprecated", None),
])
def test_marker_lines_are_read_from_buildctl_output(line, warning):
    assert lockfile.warnings_in(line) == warning


def test_job_warnings_are_masked_like_the_log_and_bounded():
    """The marker can be printed by any step of the build: a secret after it stays masked."""
    import uuid

    from builds.models import Job
    from builds.services.pipeline import MAX_WARNINGS, BuildDirector

    director = BuildDirector(Job(id="job-w", build_config={}, source_info={}), uuid.uuid4(),
                             secrets={"NPM_TOKEN": "npm_s3cr3tvalue"})
    director._warn("lockfile x: token npm_s3cr3tvalue and https://user:pw@example.invalid/x")
    assert "npm_s3cr3tvalue" not in director.warnings[0] and "user:pw" not in director.warnings[0]
    for n in range(MAX_WARNINGS + 5):
        director._warn(f"warning {n}")
        director._warn(f"warning {n}")
    assert len(director.warnings) == MAX_WARNINGS and len(set(director.warnings)) == MAX_WARNINGS
