"""Ruby apps with Bundler (Rails, Rack/Sinatra): gems installed in the full Ruby image (which
has the compilers native gems need), run on the slim image with only the shared libraries
those gems load."""

import re

from builds.dockerfile import native, versions
from builds.dockerfile.files import RepoFiles
from builds.dockerfile.model import ENTRY_POINT, PROJECT, Detection, Recipe
from builds.dockerfile.writer import Dockerfile

DEFAULT_PORT = 3000
RUNTIME_LIBRARIES = {"pg": "libpq5", "mysql2": "libmariadb3", "sqlite3": "libsqlite3-0"}


def detect(files: RepoFiles, *, runtime: str | None = None) -> Detection | None:
    if not files.is_file("Gemfile"):
        return None
    gemfile = files.read_text("Gemfile") or ""
    lock = files.read_text("Gemfile.lock") or ""
    gems = set(re.findall(r"^\s*gem\s+['\"]([\w-]+)['\"]", gemfile, re.M)) | set(re.findall(r"^    ([\w-]+) \(", lock, re.M))
    det = Detection("ruby", PROJECT, package_manager="bundler")
    required = gemfile_ruby_requirement(gemfile)
    dotfile = (versions.version_file_line(files.read_text(".ruby-version")) or "").removeprefix("ruby-")
    locked = re.search(r"RUBY VERSION\s+ruby (\d+\.\d+)(?:\.\d+)?", lock)
    tool = versions.tool_versions(files.read_text(".tool-versions"), ("ruby",))
    if dotfile:
        det.version_request, det.version_source = dotfile, ".ruby-version"
    elif tool:
        det.version_request, det.version_source = tool, ".tool-versions"
    elif locked and (not required or versions.resolve(required, [locked.group(1)], locked.group(1))):
        # the Ruby the app was locked with, as Bundler and Heroku take it, when the Gemfile allows it
        det.version_request, det.version_source = locked.group(1), "Gemfile.lock"
    elif required:
        det.version_request, det.version_source = required, "Gemfile"
    det.install = "bundle install"
    det.hints["runtime_libraries"] = sorted(lib for gem, lib in RUNTIME_LIBRARIES.items() if gem in gems)
    det.hints["dependency_files"] = [n for n in ("Gemfile", "Gemfile.lock", ".ruby-version") if files.is_file(n)]
    if files.is_file("config/application.rb") or "rails" in gems:
        det.framework, det.port = "rails", 3000
        if files.is_dir("app/assets") or files.is_file("config/importmap.rb"):
            det.build = "bundle exec rails assets:precompile"
        det.run = "bundle exec puma -C config/puma.rb" if files.is_file("config/puma.rb") \
            else "bundle exec rails server -b 0.0.0.0"
    elif files.is_file("config.ru"):
        det.framework = "sinatra" if "sinatra" in gems else "rack"
        det.port = 9292
        det.run = "bundle exec puma -b tcp://0.0.0.0:${PORT:-9292}" if "puma" in gems \
            else "bundle exec rackup -o 0.0.0.0 -p ${PORT:-9292}"
    if det.run:
        det.confidence = ENTRY_POINT
    else:
        det.fatal = "found no config.ru or Rails app to start; set runCommand"
    return det


def gemfile_ruby_requirement(gemfile: str) -> str | None:
    """The Gemfile's `ruby` directive as one range: every requirement it lists, so
    `ruby '>= 3.2', '< 4.0'` keeps its upper bound; "3.4.1" and "~> 3.4.1" name the 3.4 line,
    "~> 3.4" is 3.4 up to 4.0 (Bundler's pessimistic operator)."""
    directive = re.search(r"^\s*ruby\s*\(?\s*(['\"].*)$", gemfile, re.M)
    if not directive:
        return None
    clauses = []
    for text in re.findall(r"['\"]([^'\"]*)['\"]", directive.group(1).split(":", 1)[0]):
        match = re.fullmatch(r"\s*(~>|>=|<=|>|<|=|!=)?\s*(\d+(?:\.\d+)*)", text)
        if not match:
            continue
        op, number = match.group(1) or "=", match.group(2)
        parts = [int(p) for p in number.split(".")]
        if op == "~>" and len(parts) == 2:
            clauses += [f">={number}", f"<{parts[0] + 1}"]
        elif op in ("~>", "=") and len(parts) >= 3:
            clauses.append(f"{parts[0]}.{parts[1]}")
        else:
            clauses.append(number if op == "=" else f"{op}{number}")
    return ",".join(clauses) or None


def render(recipe: Recipe, files: RepoFiles) -> str:
    hints = recipe.hints
    bundle_env = {"BUNDLE_WITHOUT": "development:test", "BUNDLE_PATH": "/usr/local/bundle"}
    if "Gemfile.lock" in (hints.get("dependency_files") or ()):
        bundle_env = {"BUNDLE_DEPLOYMENT": "1", **bundle_env}  # install exactly the lockfile
    df = Dockerfile(tolerant=recipe.hints.get("lock_fallback", ())).stage(recipe.images["build"], "build")
    df.env(**bundle_env)
    df.workdir("/app")
    needed = hints.get("dependency_files")
    locked = recipe.install == "bundle install" and needed and "Gemfile.lock" in needed
    df.install_and_copy_source(recipe.install, needed if locked else None)
    if recipe.build:
        df.env(RAILS_ENV="production", SECRET_KEY_BASE_DUMMY="1")
        df.run(recipe.build)
    # Gems with C extensions compiled here; the run stage gets the libraries they link to.
    native.record_libraries(df, "/usr/local/bundle", "*.so", hints.get("runtime_libraries") or [])

    df.stage(recipe.images["run"])
    native.install_libraries(df)
    df.create_user()
    df.env(**bundle_env, RAILS_ENV="production", RACK_ENV="production", RAILS_LOG_TO_STDOUT="1",
           RAILS_SERVE_STATIC_FILES="1", PORT=recipe.port)
    df.copy("/usr/local/bundle", "/usr/local/bundle", from_stage="build")
    df.copy("/app", "/app", from_stage="build", chown=True)  # before WORKDIR: see node.render
    df.workdir("/app")
    df.user().expose(recipe.port)
    if recipe.run:
        df.start(recipe.run)
    return df.text()
