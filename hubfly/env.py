"""Strict readers for configuration from environment variables.

A bad value stops the process at start-up with a message naming the variable, instead of
surfacing later as a confusing failure inside a build.
"""

import json
import os
import re
from pathlib import Path


class ConfigError(Exception):
    pass


def env_str(name: str, default: str = "") -> str:
    return os.environ.get(name, default).strip()


def env_int(name: str, default: int, *, minimum: int | None = None, maximum: int | None = None) -> int:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a whole number, got {raw!r}") from None
    if minimum is not None and value < minimum:
        raise ConfigError(f"{name} must be at least {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise ConfigError(f"{name} must be at most {maximum}, got {value}")
    return value


def env_float(name: str, default: float, *, minimum: float = 0.0) -> float:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a number, got {raw!r}") from None
    if value < minimum:
        raise ConfigError(f"{name} must be at least {minimum}, got {value}")
    return value


_SIZE = re.compile(r"^(\d+(?:\.\d+)?)\s*([KMGT]i?B|B)?$", re.I)
_SIZE_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
               "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


def env_bytes(name: str, default: int, *, minimum: int = 0) -> int:
    """A size in bytes: a whole number of bytes, or a number with a unit (500MB, 2GiB, 1.5GB)."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    match = _SIZE.match(raw)
    if not match:
        raise ConfigError(f"{name} must be a size such as 1073741824, 500MB or 2GiB, got {raw!r}")
    value = int(float(match[1]) * _SIZE_UNITS[(match[2] or "").lower()])
    if value < minimum:
        raise ConfigError(f"{name} must be at least {minimum} bytes, got {raw!r}")
    return value


def env_bool(name: str, default: bool) -> bool:
    raw = os.environ.get(name, "").strip().lower()
    if not raw:
        return default
    if raw in ("1", "true", "yes", "on"):
        return True
    if raw in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{name} must be true or false, got {raw!r}")


def env_passed(*names: str) -> dict[str, str]:
    """The variables among `names` that are set, as they are: handed on to child processes."""
    return {name: os.environ[name] for name in names if name in os.environ}


def env_list(name: str) -> list[str]:
    return [part.strip() for part in os.environ.get(name, "").split(",") if part.strip()]


def read_json_file(path: str | Path, what: str):
    """An operator's JSON config file, or a ConfigError naming the file and the problem."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read {what} file {path}: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise ConfigError(f"{what} file {path} is not valid JSON: {exc}") from None


def sqlite_path(url: str) -> str | None:
    """The file of a SQLAlchemy SQLite URL (`sqlite:///relative`, `sqlite:////absolute`), as an
    absolute path; None for other databases and in-memory SQLite."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        raise ConfigError(f"not a database URL: {url!r}")
    if scheme.split("+", 1)[0] != "sqlite":
        return None
    path = rest.partition("/")[2].partition("?")[0]
    if path in ("", ":memory:"):
        return None
    return os.path.abspath(path)
