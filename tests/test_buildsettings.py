"""The typed view of a job's build_config (builds/buildsettings.py): defaults in one place, and
each setting as the service reads it."""

from builds.buildsettings import BuildSettings


def test_an_empty_build_config_takes_the_defaults(settings):
    settings.DEFAULT_TIMEOUT_SECONDS, settings.SUPERSEDE_DEFAULT, settings.BUILD_NETWORK = 900, "false", "bridge"
    for config in (None, {}):
        wanted = BuildSettings.of(config)
        assert (wanted.timeout_seconds, wanted.network, wanted.attestations, wanted.priority, wanted.supersede) == (
            900, "bridge", True, "normal", False)
        assert (wanted.memory_mb, wanted.cpu, wanted.dockerfile_path, wanted.generated) == (None, None, "", False)
        assert wanted.build_args == {}


def test_each_setting_as_the_service_reads_it(settings):
    settings.BUILD_NETWORK = "bridge"
    wanted = BuildSettings.of({
        "env": {"NODE_ENV": "production", "TOKEN": "s3cret"}, "secrets": ["TOKEN"], "timeoutSeconds": 60,
        "resourceLimits": {"memoryMB": 512, "cpu": 0.5}, "network": "none", "attestations": False,
        "priority": "high", "supersede": "running", "dockerfilePath": "deploy/Dockerfile",
        "buildContextDir": "app", "isAutoBuild": False, "runtime": "node",
    })
    assert wanted.build_args == {"NODE_ENV": "production"}  # a secret never becomes a build argument
    assert (wanted.timeout_seconds, wanted.memory_mb, wanted.cpu) == (60, 512, 0.5)
    assert (wanted.network, wanted.attestations, wanted.priority, wanted.supersede) == ("none", False, "high", "running")
    assert (wanted.dockerfile_path, wanted.build_context_dir, wanted.generated) == ("deploy/Dockerfile", "app", True)


def test_the_operators_settings_win_where_they_are_stricter(settings):
    settings.BUILD_NETWORK, settings.SUPERSEDE_DEFAULT = "none", "running"
    wanted = BuildSettings.of({"network": "bridge"})
    assert wanted.network == "none" and wanted.supersede == "running"
    assert BuildSettings.of({"supersede": False}).supersede is False
    assert BuildSettings.of({"supersede": True}).supersede is True
