"""Zero-config builds: runtime detection, Dockerfile generation and the command allowlist.

Pure functions over a checkout's files (read through files.RepoFiles, never executed) and two
operator config files, configs/runtimes.json and configs/allowed-commands.json.

    check_build_config(build_config)  submit-time check of the runtime/version/commands named
    plan_build(app_dir, build_config, repo_root=...) -> BuildPlan (the Dockerfile and settings)
"""

from builds.dockerfile.allowlist import Allowlist, load_allowlist
from builds.dockerfile.plan import BuildPlan, check_build_config, plan_build
from builds.dockerfile.runtimes import Runtimes, load_runtimes

__all__ = ["Allowlist", "BuildPlan", "Runtimes", "check_build_config", "load_allowlist", "load_runtimes", "plan_build"]
