"""docker-compose.yml's shape: it parses and what it runs exists in this repository. The stack
itself runs for real in scripts/compose-test (tests/support/compose.py)."""

from pathlib import Path

import yaml
from django.core.management import get_commands

ROOT = Path(__file__).resolve().parent.parent


def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_compose_has_the_production_services():
    services = compose()["services"]
    assert {"web", "worker", "maintenance", "beat", "buildkitd", "registry", "migrate"} <= set(services)
    assert services["postgres"]["profiles"] == ["scale"] and services["rabbitmq"]["profiles"] == ["scale"]
    assert services["web"]["command"][0] == "gunicorn"
    assert services["worker"]["command"][:4] == ["celery", "-A", "hubfly", "worker"]
    assert services["beat"]["command"][:4] == ["celery", "-A", "hubfly", "beat"]
    assert "maintenance" in services["maintenance"]["command"]
    for name, service in services.items():
        assert name == "migrate" or "healthcheck" in service, name


def test_worker_is_given_longer_than_a_build_to_stop():
    grace = compose()["services"]["worker"]["stop_grace_period"]
    assert grace.endswith("m") and int(grace[:-1]) >= 15


def test_what_compose_runs_exists():
    services = compose()["services"]
    migrate = " ".join(services["migrate"]["command"])
    for command in ("migrate", "init_broker"):
        assert command in migrate and command in get_commands()
    app = services["web"]["command"][1]
    module, _, attribute = app.partition(":")
    assert module == "hubfly.asgi" and attribute == "application"
    assert (ROOT / "hubfly" / "asgi.py").is_file()
    web = " ".join(services["web"]["command"])
    procfile_web = next(line for line in (ROOT / "configs" / "Procfile").read_text().splitlines()
                        if line.startswith("web:"))
    for option in ("--worker-class uvicorn_worker.UvicornWorker", "--config python:hubfly.gunicorn_conf"):
        assert option in web and option in procfile_web
    for service in services.values():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (ROOT / source).exists(), source
    assert (ROOT / "Dockerfile").is_file()


def test_builds_in_compose_run_contained_and_the_registry_wants_credentials():
    services = compose()["services"]
    buildkitd = services["buildkitd"]
    dockerfile = (ROOT / buildkitd["build"]["dockerfile"]).read_text()
    assert "containernetworking-plugins" in dockerfile and "iptables" in dockerfile
    assert "infra/buildnet.py" in dockerfile and (ROOT / "configs" / "buildkitd-entrypoint.sh").is_file()
    config = (ROOT / "configs" / "buildkitd.toml").read_text()
    assert 'networkMode = "cni"' in config and "/var/lib/buildkit/buildnet/cni.conflist" in config
    entrypoint = (ROOT / "configs" / "buildkitd-entrypoint.sh").read_text()
    assert "buildnet.py apply --state-dir \"$state\"" in entrypoint and "buildnet.py remove" in entrypoint
    registry = services["registry"]
    assert registry["environment"]["REGISTRY_AUTH"] == "htpasswd"
    assert any(volume.startswith("registry-auth:") for volume in registry["volumes"])
    assert "registry-auth --data-dir /data --htpasswd /registry-auth/htpasswd" in " ".join(services["migrate"]["command"])


def test_the_service_user_may_use_the_buildkitd_socket():
    services = compose()["services"]
    command = services["buildkitd"]["command"]
    group = command[command.index("--group") + 1]
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert f"--gid {group}" in dockerfile and f"--uid {group} --gid {group}" in dockerfile


def test_the_build_worker_runs_max_concurrent_builds_at_once():
    services = compose()["services"]
    assert "--concurrency" not in services["worker"]["command"]
    assert services["worker"]["environment"]["MAX_CONCURRENT_BUILDS"] == "${MAX_CONCURRENT_BUILDS:-3}"
    from django.conf import settings

    assert settings.CELERY_WORKER_CONCURRENCY == settings.MAX_CONCURRENT_BUILDS


def test_only_the_build_worker_holds_the_buildkitd_socket():
    services = compose()["services"]
    holders = {name for name, service in services.items()
               if any(volume.startswith("buildkit-run:") for volume in service.get("volumes", []))}
    assert holders == {"worker", "buildkitd"}
    for name in ("web", "maintenance", "beat"):
        assert services[name]["environment"]["PROBE_BUILDKIT"] == "false"


def _settings_in_a_fresh_process(env: dict, code: str) -> str:
    import os
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-c", "import django; django.setup(); from django.conf import settings; " + code],
        env={**os.environ, "DJANGO_SETTINGS_MODULE": "hubfly.settings", **env},
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_an_empty_broker_url_from_compose_means_the_sqlite_default(tmp_path):
    # docker-compose.yml passes CELERY_BROKER_URL through, empty unless --profile scale sets it.
    url = _settings_in_a_fresh_process({"CELERY_BROKER_URL": "", "DATA_DIR": str(tmp_path)},
                                       "print(settings.CELERY_BROKER_URL)")
    assert url == f"sqlite:///{tmp_path}/broker.sqlite3", url  # the sqla+ transport's own URL


def test_a_process_without_buildkitd_leaves_it_out_of_readyz(tmp_path):
    code = "from builds.services.operations import health; print(sorted(health.checks()))"
    env = {"DATA_DIR": str(tmp_path), "BUILDKIT_ADDR": f"unix://{tmp_path}/none.sock"}
    without = _settings_in_a_fresh_process({**env, "PROBE_BUILDKIT": "false"}, code)
    assert without == str(["broker", "database", "registry"])
    assert "buildkitd" in _settings_in_a_fresh_process(env, code)
