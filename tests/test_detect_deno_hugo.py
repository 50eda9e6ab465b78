"""Deno and Hugo detection and their generated Dockerfiles; which submodules a checkout records
and where their relative URLs lead (issue 13, item 6). Nothing is built here: the builds are in
tests/test_corpus.py."""

import subprocess

import pytest

from builds import errors
from builds.errors import UserError
from builds.services.steps.fetch import resolve_submodule_url, submodules
from tests.test_detect import plan, refusal


def test_deno_entry_file_using_deno_is_detected_and_run_with_server_permissions(tmp_path):
    built = plan(tmp_path, {"src/index.ts": 'Deno.serve({ port: 8000 }, () => new Response("hi"));\n'})
    assert (built.runtime, built.version, built.package_manager) == ("deno", "2", "deno")
    assert built.install_command == "deno install --entrypoint src/index.ts"
    assert built.run_command == "deno run --allow-net --allow-env --allow-read src/index.ts"
    assert built.base_image == "denoland/deno:2.9" and built.expose_port == 8000
    assert "USER app" in built.dockerfile and "COPY --from=build --chown=app:app /deno-dir /deno-dir" in built.dockerfile


def test_deno_json_start_task_is_the_start_command(tmp_path):
    built = plan(tmp_path, {"deno.json": {"tasks": {"start": "deno run -A main.ts"}, "imports": {}},
                            "main.ts": "console.log(1)\n"})
    assert built.runtime == "deno" and built.run_command == "deno task start"


def test_plain_typescript_in_a_node_project_stays_node(tmp_path):
    built = plan(tmp_path, {"package.json": {"scripts": {"start": "node index.js"}}, "index.js": "",
                            "src/index.ts": "export const a = 1;\n"})
    assert built.runtime == "node"


def test_hugo_site_is_generated_and_served_as_files(tmp_path):
    built = plan(tmp_path, {"config.toml": 'baseURL = "https://example.org"\ntheme = "ananke"\n',
                            "content/posts/a.md": "---\ntitle: a\n---\n", ".gitmodules": ""})
    assert (built.runtime, built.framework, built.build_command, built.run_command) == ("hugo", "hugo", "hugo --minify",
                                                                                        None)
    assert built.dockerfile.startswith("FROM hugomods/hugo:std-0.164.0 AS build\n")
    assert "COPY --from=build /site/public/ /srv/www/" in built.dockerfile
    assert "try_files $uri $uri/ =404;" in built.dockerfile  # a site's missing page is a 404, not its home


def test_a_config_toml_that_is_not_a_hugo_site_is_not_taken_for_one(tmp_path):
    error = refusal(tmp_path, {"config.toml": "[server]\nport = 1\n"})
    assert error.code == errors.NOTHING_TO_BUILD


def git(cwd, *args):
    subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True,
                   env={"PATH": "/usr/bin:/bin", "HOME": str(cwd), "GIT_CONFIG_NOSYSTEM": "1",
                        "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.invalid",
                        "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.invalid"})


def checkout_with(tmp_path, gitmodules: str, links: dict[str, str]):
    git(tmp_path, "init", "-q")
    (tmp_path / ".gitmodules").write_text(gitmodules)
    git(tmp_path, "add", ".gitmodules")
    for path, sha in links.items():
        git(tmp_path, "update-index", "--add", "--cacheinfo", f"160000,{sha},{path}")
    git(tmp_path, "commit", "-q", "-m", "x")
    return tmp_path


def test_submodules_are_the_gitmodules_entries_with_a_gitlink(tmp_path):
    tree = checkout_with(tmp_path, '[submodule "t"]\n\tpath = themes/t\n\turl = ../t.git\n'
                                   '[submodule "gone"]\n\tpath = old\n\turl = https://example.org/old.git\n',
                         {"themes/t": "a" * 40})
    assert submodules(tree) == [("themes/t", "../t.git", "a" * 40)]


def test_a_submodule_under_a_dot_directory_is_refused_before_any_fetch(tmp_path):
    """git records such a gitlink; the builder refuses dot-file names (.git, .github...) as
    places to write a fetched repository."""
    tree = checkout_with(tmp_path, '[submodule "x"]\n\tpath = .hidden/x\n\turl = https://example.org/x.git\n',
                         {".hidden/x": "b" * 40})
    with pytest.raises(UserError) as caught:
        submodules(tree)
    assert caught.value.code == errors.SOURCE_REFUSED and ".hidden/x" in str(caught.value)


@pytest.mark.parametrize("parent, url, resolved", [
    ("http://127.0.0.1:8/site.git", "../theme.git", "http://127.0.0.1:8/theme.git"),
    ("https://git.example.org/a/site.git", "../../b/theme.git", "https://git.example.org/b/theme.git"),
    ("https://git.example.org/a/site.git", "./sub.git", "https://git.example.org/a/site.git/sub.git"),
    ("https://git.example.org/a/site.git", "file:///etc/x.git", "file:///etc/x.git"),
])
def test_relative_submodule_urls_resolve_against_the_repository_as_git_does(parent, url, resolved):
    assert resolve_submodule_url(parent, url) == resolved


def test_next_app_with_static_export_commented_out_runs_its_server(tmp_path):
    """render-examples/nextjs-hello-world: `// output: "export",` is a comment, so `next start` serves it."""
    package = {"scripts": {"build": "next build", "start": "next start"}, "dependencies": {"next": "14.0.0"}}
    built = plan(tmp_path, {"package.json": package, "yarn.lock": "",
                            "next.config.mjs": 'const nextConfig = {\n  // output: "export",\n  reactStrictMode: true,\n};\n'
                                               "export default nextConfig;\n"})
    assert built.framework == "next" and built.run_command is not None and built.expose_port == 3000
