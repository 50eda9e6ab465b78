"""Matching a version request from a repository or a request to the versions runtimes.json has.

A known version such as "20" or "3.12" stands for a release line (every 20.x.y, every 3.12.z).
A request is either a plain version ("20", "20.11.1", "v3.12.4": the line it belongs to) or a
range in npm or PEP 440 style (">=18", "^3.11", "~=3.10", ">=3.9,<3.13", "18.x || 20.x").
For a range the runtime's default wins when it satisfies the range, otherwise the newest
known line that does; None means no known line can satisfy the request.
"""

import re

_NUMERIC = re.compile(r"^v?(\d+(?:\.\d+)*)")
_COMPARATOR = re.compile(r"^(>=|<=|==|~=|!=|>|<|=|\^|~)?\s*v?(\d+(?:\.(?:\d+|[xX*]))*)(?:[-+][0-9A-Za-z.-]*)?$")
_INF = 10**9


def version_file_line(text: str | None) -> str | None:
    """The version a one-line version file (.python-version, .nvmrc, runtime.txt...) names: its
    first line that is not blank or a comment, without a trailing comment."""
    for line in (text or "").splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            return line
    return None


def tool_versions(text: str | None, names: tuple[str, ...]) -> str | None:
    """The version .tool-versions (asdf, mise) gives the first of `names` it lists."""
    for line in (text or "").splitlines():
        fields = line.split("#", 1)[0].split()
        if len(fields) >= 2 and fields[0] in names:
            return fields[1]
    return None


def parse(text: str) -> tuple[int, ...] | None:
    match = _NUMERIC.match(text.strip())
    return tuple(int(part) for part in match.group(1).split(".")) if match else None


def resolve(request: str, known: list[str], default: str) -> str | None:
    request = request.strip()
    if request in known:
        return request
    if not request or request.lower() in ("*", "x", "latest", "current", "stable", "lts"):
        return default
    plain = parse(request)
    if plain is not None and _NUMERIC.match(request).end() == len(request):
        return _line_of(plain, known, default)
    alternatives = _parse_range(request)
    if alternatives is None:
        return None
    fitting = [k for k in known if parse(k) and any(_line_satisfies(parse(k), alt) for alt in alternatives)]
    if not fitting:
        return None
    if default in fitting:
        return default
    return max(fitting, key=parse)


def _line_of(version: tuple[int, ...], known: list[str], default: str) -> str | None:
    """The known line a concrete version belongs to ("20.11.1" -> "20"); for a request less
    precise than the lines ("3" with lines "3.11", "3.12"), the newest line under it."""
    matches = []
    for key in known:
        line = parse(key)
        if line is None:
            continue
        common = min(len(line), len(version))
        if line[:common] == version[:common]:
            matches.append(key)
    if default in matches:
        return default
    return max(matches, key=parse) if matches else None


def _parse_range(text: str) -> list[list[tuple[str, tuple[int, ...]]]] | None:
    """OR-list of AND-lists of (operator, version); None when the text is not a range."""
    alternatives = []
    for alternative in text.split("||"):
        alternative = re.sub(r"(>=|<=|==|~=|!=|>|<|=|\^|~)\s+", r"\1", alternative.strip())
        hyphen = re.fullmatch(r"v?([\d.]+)\s+-\s+v?([\d.]+)", alternative)
        if hyphen:
            alternative = f">={hyphen.group(1)} <={hyphen.group(2)}"
        comparators = []
        for token in re.split(r"[\s,]+", alternative):
            if not token or token in ("*", "x", "X"):
                continue
            match = _COMPARATOR.match(token)
            if not match:
                return None
            comparators.extend(_expand(match.group(1) or "=", match.group(2)))
        alternatives.append(comparators)
    return alternatives


def _expand(op: str, version_text: str) -> list[tuple[str, tuple[int, ...]]]:
    parts = version_text.split(".")
    wildcard = any(p in ("x", "X", "*") for p in parts)
    numbers = tuple(int(p) for p in parts if p.isdigit())
    if wildcard:
        parts = parts[: next(i for i, p in enumerate(parts) if p in ("x", "X", "*"))]
        numbers = tuple(int(p) for p in parts)
        op = "=" if op in ("=", "==") else op
    if op in ("=", "=="):
        return [("prefix", numbers)] if numbers else []
    if op == "^":
        bump = next((i for i, n in enumerate(numbers) if n != 0), len(numbers) - 1)
        return [(">=", numbers), ("<", _bump(numbers, bump))]
    if op == "~":
        return [(">=", numbers), ("<", _bump(numbers, 1 if len(numbers) > 1 else 0))]
    if op == "~=":
        return [(">=", numbers), ("<", _bump(numbers, max(len(numbers) - 2, 0)))]
    return [(op, numbers)]


def _bump(numbers: tuple[int, ...], index: int) -> tuple[int, ...]:
    return numbers[:index] + (numbers[index] + 1,)


def _line_satisfies(line: tuple[int, ...], comparators: list[tuple[str, tuple[int, ...]]]) -> bool:
    """Whether some release of the line (e.g. 3.12.*) can satisfy every comparator."""
    lowest = line + (0,) * 3
    highest = line + (_INF,) * 3
    for op, version in comparators:
        padded = version + (0,) * (len(lowest) - len(version))
        if op == "prefix":
            common = min(len(line), len(version))
            ok = line[:common] == version[:common]
        elif op == ">=":
            ok = highest >= padded
        elif op == ">":
            ok = highest > padded
        elif op == "<":
            ok = lowest < padded
        elif op == "<=":
            ok = lowest <= padded
        else:  # "!=" can only rule out a line pinned to exactly that version
            ok = True
        if not ok:
            return False
    return True
