"""Reading a hostile checkout: the only way detection looks at repository files.

Every path is resolved and must stay inside the repository root (so a symlink to /etc/passwd
or a `..` reads nothing), only regular files up to MAX_FILE_BYTES are read, undecodable bytes
are replaced, and unparseable JSON/TOML comes back as None with a note in `problems` instead of
an exception. Directory walks are bounded in depth and count and never follow symlinks.
"""

import json
import os
import stat
import tomllib
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

MAX_FILE_BYTES = 1024 * 1024
MAX_WALK_FILES = 5000
SKIPPED_DIRS = frozenset({"node_modules", "vendor", "__pycache__", "venv", "target", "dist", "build"})


class RepoFiles:
    """A read-only view of one directory (`base`) of a checkout rooted at `root`."""

    def __init__(self, root: Path, base: Path | None = None):
        self.root = Path(os.path.realpath(root))
        self.base = Path(os.path.realpath(base if base is not None else root))
        if not _within(self.root, self.base):
            raise ValueError(f"{base} is outside the repository")
        self.problems: list[str] = []

    @property
    def subdir(self) -> str:
        """The base directory relative to the repository root, "" for the root itself."""
        rel = self.base.relative_to(self.root).as_posix()
        return "" if rel == "." else rel

    def at_root(self) -> "RepoFiles":
        view = RepoFiles(self.root)
        view.problems = self.problems
        return view

    def _resolve(self, relative: str) -> Path | None:
        pure = PurePosixPath(relative)
        if pure.is_absolute() or ".." in pure.parts:
            return None
        real = Path(os.path.realpath(self.base / pure))
        return real if _within(self.root, real) else None

    def _stat(self, relative: str) -> os.stat_result | None:
        real = self._resolve(relative)
        if real is None:
            return None
        try:
            return os.stat(real)
        except OSError:
            return None

    def is_file(self, relative: str) -> bool:
        st = self._stat(relative)
        return st is not None and stat.S_ISREG(st.st_mode)

    def is_dir(self, relative: str) -> bool:
        st = self._stat(relative)
        return st is not None and stat.S_ISDIR(st.st_mode)

    def any_file(self, *relatives: str) -> str | None:
        """The first of the names that is a regular file."""
        return next((name for name in relatives if self.is_file(name)), None)

    def read_bytes(self, relative: str) -> bytes | None:
        real = self._resolve(relative)
        if real is None:
            return None
        try:
            fd = os.open(real, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        except OSError:
            return None
        with os.fdopen(fd, "rb") as fh:
            if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
                return None
            data = fh.read(MAX_FILE_BYTES + 1)
        if len(data) > MAX_FILE_BYTES:
            self.problems.append(f"{self._shown(relative)} is larger than 1 MiB and was ignored")
            return None
        return data

    def read_text(self, relative: str) -> str | None:
        data = self.read_bytes(relative)
        return None if data is None else data.decode("utf-8", errors="replace").lstrip("\ufeff")

    def read_json(self, relative: str) -> dict | None:
        """The JSON object in the file; None (and a problem noted) when it is not one."""
        text = self.read_text(relative)
        if text is None:
            return None
        try:
            value = json.loads(text)
        except (ValueError, RecursionError) as exc:
            self.problems.append(f"{self._shown(relative)} is not valid JSON ({_short(exc)})")
            return None
        if not isinstance(value, dict):
            self.problems.append(f"{self._shown(relative)} does not hold a JSON object")
            return None
        return value

    def read_toml(self, relative: str) -> dict | None:
        text = self.read_text(relative)
        if text is None:
            return None
        try:
            return tomllib.loads(text)
        except (tomllib.TOMLDecodeError, RecursionError, ValueError) as exc:
            self.problems.append(f"{self._shown(relative)} is not valid TOML ({_short(exc)})")
            return None

    def list_dir(self, relative: str = "") -> list[str]:
        """Sorted entry names of a directory inside the repository ([] when there is none)."""
        real = self._resolve(relative or ".")
        if real is None:
            return []
        try:
            with os.scandir(real) as entries:
                return sorted(entry.name for entry in entries)
        except OSError:
            return []

    def walk(self, suffix: str, *, max_depth: int = 4) -> Iterator[str]:
        """Relative paths of regular files ending in suffix, breadth-first, skipping dot and
        dependency directories; symlinked directories are not entered."""
        queue: list[tuple[str, int]] = [("", 0)]
        seen = 0
        while queue:
            relative, depth = queue.pop(0)
            real = self._resolve(relative or ".")
            if real is None:
                continue
            try:
                with os.scandir(real) as it:
                    entries = sorted(it, key=lambda e: e.name)
            except OSError:
                continue
            for entry in entries:
                seen += 1
                if seen > MAX_WALK_FILES:
                    return
                child = f"{relative}/{entry.name}" if relative else entry.name
                if entry.is_dir(follow_symlinks=False):
                    if depth < max_depth and not entry.name.startswith(".") and entry.name not in SKIPPED_DIRS:
                        queue.append((child, depth + 1))
                elif entry.name.endswith(suffix) and entry.is_file(follow_symlinks=False):
                    yield child

    def _shown(self, relative: str) -> str:
        return f"{self.subdir}/{relative}" if self.subdir else relative


def _within(root: Path, path: Path) -> bool:
    return path == root or root in path.parents


def _short(exc: Exception) -> str:
    return str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__
