"""Every job error code lives in builds/errors.py (issue 16, item 3): the code reads it by name,
never as a string literal of its own, so a code cannot be invented or misspelled in one place;
and each code has a failure type of its own (README "Failure types"). Read from the source."""

import ast
from pathlib import Path

from builds import errors

REPO_ROOT = Path(__file__).resolve().parent.parent
CODES = {value for name, value in vars(errors).items() if name.isupper() and name == value}
NEVER_STORED = {errors.LEASE_LOST}  # the attempt stops without touching the job


def _sources():
    for folder in ("builds", "hubfly"):
        for path in sorted((REPO_ROOT / folder).rglob("*.py")):
            if "migrations" not in path.parts and path != REPO_ROOT / "builds" / "errors.py":
                yield path


def _literal_codes(tree: ast.AST):
    """String literals where a job error code goes: `code=` and `error_code=` arguments, an
    "error_code" dict entry, a class's `code = ...`, and `_finish(status, code, ...)`."""
    for node in ast.walk(tree):
        if isinstance(node, ast.keyword) and node.arg in ("code", "error_code"):
            yield node.value
        elif isinstance(node, ast.Dict):
            yield from (v for k, v in zip(node.keys, node.values)
                        if isinstance(k, ast.Constant) and k.value == "error_code")
        elif isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "code" for t in node.targets):
            yield node.value
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "_finish"
              and len(node.args) > 1):
            yield node.args[1]


def test_no_job_error_code_is_a_string_literal_outside_builds_errors():
    found = [f"{path.relative_to(REPO_ROOT)}:{value.lineno}: {value.value!r}"
             for path in _sources() for value in _literal_codes(ast.parse(path.read_text()))
             if isinstance(value, ast.Constant) and isinstance(value.value, str) and value.value]
    assert not found, "name the code from builds/errors.py instead:\n" + "\n".join(found)


def test_every_code_has_a_failure_type_and_is_in_the_readme():
    typed = {code for codes in errors.FAILURE_TYPES.values() for code in codes}
    assert CODES - NEVER_STORED == typed
    readme = (REPO_ROOT / "README.md").read_text()
    assert [code for code in sorted(typed) if f"`{code}`" not in readme] == []
