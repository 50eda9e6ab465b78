"""docker-compose.yml is for users (no Docker engine runs here): check it parses and that what
it runs exists in this repository."""

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
    for name in ("web", "buildkitd", "registry", "postgres", "rabbitmq"):
        assert "healthcheck" in services[name], name


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
    assert "hubfly/buildnet.py" in dockerfile and (ROOT / "configs" / "buildkitd-entrypoint.sh").is_file()
    config = (ROOT / "configs" / "buildkitd.toml").read_text()
    assert 'networkMode = "cni"' in config and "/var/lib/buildkit/buildnet/cni.conflist" in config
    entrypoint = (ROOT / "configs" / "buildkitd-entrypoint.sh").read_text()
    assert "buildnet.py apply --state-dir \"$state\"" in entrypoint and "buildnet.py remove" in entrypoint
    registry = services["registry"]
    assert registry["environment"]["REGISTRY_AUTH"] == "htpasswd"
    assert any(volume.startswith("registry-auth:") for volume in registry["volumes"])
    assert "registry-auth --data-dir /data --htpasswd /registry-auth/htpasswd" in " ".join(services["migrate"]["command"])
