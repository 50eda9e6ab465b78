"""PHP web apps (Laravel, Symfony, Slim, plain index.php): Composer dependencies installed in a
composer stage, served by Apache with mod_php on an unprivileged port as www-data.

Laravel web apps build and start with no runtime-init script (the Go original's Laravel path
always failed its own allowlist, facts 13.22); migrations and caches are the deployer's
business.
"""


from builds.dockerfile.files import RepoFiles
from builds.dockerfile.model import ENTRY_POINT, PROJECT, Detection, Recipe
from builds.dockerfile.writer import Cache, Dockerfile

DEFAULT_PORT = 8080
# The composer image's PHP is not the run image's, hence --ignore-platform-reqs (extensions are checked below).
COMPOSER_INSTALL = ("composer install --no-dev --no-interaction --prefer-dist --no-scripts --no-autoloader"
                    " --ignore-platform-reqs")
# Extensions docker-php-ext-install builds, with the Debian packages they compile against.
CORE_EXTENSIONS = {
    "bcmath": (), "calendar": (), "exif": (), "gettext": (), "mysqli": (), "opcache": (), "pcntl": (),
    "pdo_mysql": (), "shmop": (), "sockets": (), "sysvmsg": (), "sysvsem": (), "sysvshm": (),
    "intl": ("libicu-dev",), "zip": ("libzip-dev",), "pgsql": ("libpq-dev",), "pdo_pgsql": ("libpq-dev",),
    "gd": ("libfreetype6-dev", "libjpeg62-turbo-dev", "libpng-dev"), "bz2": ("libbz2-dev",),
    "gmp": ("libgmp-dev",), "xsl": ("libxslt1-dev",), "soap": ("libxml2-dev",),
}
PECL_EXTENSIONS = {"redis": (), "apcu": (), "imagick": ("libmagickwand-dev",), "mongodb": ("libssl-dev",)}
# Built into the official php images already.
BUNDLED = {"ctype", "curl", "dom", "fileinfo", "filter", "hash", "iconv", "json", "libxml", "mbstring", "mysqlnd",
           "openssl", "pcre", "pdo", "pdo_sqlite", "phar", "posix", "readline", "reflection", "session",
           "simplexml", "sodium", "spl", "sqlite3", "standard", "tokenizer", "xml", "xmlreader", "xmlwriter", "zlib"}
_APACHE_SETUP = (
    "a2enmod rewrite headers"
    " && sed -ri -e 's/^Listen 80$/Listen {port}/' /etc/apache2/ports.conf"
    " && sed -ri -e 's/<VirtualHost \\*:80>/<VirtualHost *:{port}>/' -e 's!/var/www/html!{docroot}!g'"
    " /etc/apache2/sites-available/000-default.conf"
    " && sed -ri -e 's!/var/www/!/app/!g' /etc/apache2/apache2.conf"
    " && sed -ri -e 's/^AllowOverride None/AllowOverride All/' /etc/apache2/apache2.conf"
    " && cp \"$PHP_INI_DIR/php.ini-production\" \"$PHP_INI_DIR/php.ini\""
)


def detect(files: RepoFiles, *, runtime: str | None = None) -> Detection | None:
    composer = files.read_json("composer.json") if files.is_file("composer.json") else None
    entry = files.any_file("public/index.php", "index.php", "web/index.php")
    if composer is None and entry is None and not files.is_file("composer.json"):
        return None
    det = Detection("php", PROJECT, package_manager="composer" if files.is_file("composer.json") else None,
                    port=DEFAULT_PORT)
    if files.is_file("composer.json") and composer is None:
        det.fatal = files.problems[-1] if files.problems else "composer.json cannot be read"
        return det
    composer = composer or {}
    require = composer.get("require") if isinstance(composer.get("require"), dict) else {}
    platform = ((composer.get("config") or {}).get("platform") or {}) if isinstance(composer.get("config"), dict) else {}
    if files.is_file("artisan") or "laravel/framework" in require:
        det.framework, docroot = "laravel", "public"
    elif files.is_file("bin/console") or "symfony/framework-bundle" in require:
        det.framework, docroot = "symfony", "public"
    elif "slim/slim" in require:
        # Slim has no fixed layout: public/ by its skeleton, web/ in Heroku's template.
        det.framework, docroot = "slim", entry.rpartition("/")[0] if entry and "/" in entry else "public"
    else:
        docroot = entry.rpartition("/")[0] if entry else ("public" if files.is_dir("public") else "")
    php = platform.get("php") if isinstance(platform.get("php"), str) else require.get("php")
    if isinstance(php, str):
        det.version_request, det.version_source = php, "composer.json"
    if files.is_file("composer.json"):
        det.install = COMPOSER_INSTALL
        det.build = "composer dump-autoload --no-dev --optimize"
    det.run = "apache2-foreground"
    det.hints.update(docroot=docroot, extensions=_extensions(require, platform, det))
    det.hints["dependency_files"] = [n for n in ("composer.json", "composer.lock") if files.is_file(n)]
    det.confidence = ENTRY_POINT if (entry or det.framework) else PROJECT
    return det


def _extensions(require: dict, platform: dict, det: Detection) -> list[str]:
    wanted = {key[4:].lower() for key in list(require) + list(platform) if isinstance(key, str) and key.startswith("ext-")}
    known = sorted(ext for ext in wanted if ext in CORE_EXTENSIONS or ext in PECL_EXTENSIONS)
    for ext in sorted(wanted - set(known) - BUNDLED):
        det.warnings.append(f"PHP extension {ext} is required but the generated image does not install it")
    return known


def render(recipe: Recipe, files: RepoFiles) -> str:
    hints = recipe.hints
    docroot = "/app" + (f"/{hints['docroot']}" if hints.get("docroot") else "")
    df = Dockerfile(tolerant=recipe.hints.get("lock_fallback", ()))
    if recipe.install or recipe.build:
        df.stage(recipe.images["composer"], "build")
        df.workdir("/app")
        caches = (Cache("composer", "/tmp/composer-cache"),)
        df.env(COMPOSER_CACHE_DIR="/tmp/composer-cache")
        composer_first = recipe.install == COMPOSER_INSTALL
        df.install_and_copy_source(recipe.install, hints.get("dependency_files") if composer_first else None, caches)
        if recipe.build:
            df.run(recipe.build, caches)

    df.stage(recipe.images["run"])
    extensions = hints.get("extensions") or []
    packages = sorted({p for ext in extensions for p in (CORE_EXTENSIONS.get(ext) or PECL_EXTENSIONS.get(ext, ()))})
    if packages:
        df.run("apt-get update && apt-get install -y --no-install-recommends " + " ".join(packages)
               + " && rm -rf /var/lib/apt/lists/*")
    core = [ext for ext in extensions if ext in CORE_EXTENSIONS and ext != "opcache"] + ["opcache"]
    if "gd" in core:
        df.run("docker-php-ext-configure gd --with-freetype --with-jpeg")
    df.run("docker-php-ext-install -j$(nproc) " + " ".join(core))
    pecl = [ext for ext in extensions if ext in PECL_EXTENSIONS]
    if pecl:
        df.run(f"pecl install {' '.join(pecl)} && docker-php-ext-enable {' '.join(pecl)} && rm -rf /tmp/pear")
    df.run(_APACHE_SETUP.format(port=recipe.port, docroot=docroot))
    # Copied before WORKDIR: a directory WORKDIR made stays root's even under COPY --chown.
    if recipe.install or recipe.build:
        df.raw("COPY --from=build --chown=www-data:www-data /app /app")
    else:
        df.raw("COPY --chown=www-data:www-data --exclude=.git . /app")
    df.workdir("/app")
    df.env(PORT=recipe.port, APP_ENV="prod" if recipe.framework == "symfony" else "production")
    df.raw("USER www-data")
    df.expose(recipe.port)
    if recipe.run:
        df.start(recipe.run)
    return df.text()
