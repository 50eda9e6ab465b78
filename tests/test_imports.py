"""How the code imports (issue 16): no import cycle among the project's modules, no import
inside a function without a comment saying why, no service importing the Celery tasks, and
the build workers' processes without the web's libraries (DRF, the HTTP client)."""

import ast
import os
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("builds", "hubfly", "infra")


def _modules() -> dict[str, Path]:
    modules = {}
    for package in PACKAGES:
        for path in (REPO_ROOT / package).rglob("*.py"):
            if "migrations" in path.parts:
                continue
            name = ".".join(path.relative_to(REPO_ROOT).with_suffix("").parts)
            modules[name.removesuffix(".__init__")] = path
    return modules


def _imported(name: str, node: ast.Import | ast.ImportFrom, modules: dict) -> set[str]:
    """The project's modules an import statement of module `name` loads (a package's
    submodule named in `from package import submodule` counts as that submodule)."""
    if isinstance(node, ast.Import):
        targets = [alias.name for alias in node.names]
    else:
        package = name if modules[name].name == "__init__.py" else name.rpartition(".")[0]
        for _ in range(max(node.level - 1, 0)):
            package = package.rpartition(".")[0]
        base = ".".join(part for part in (package if node.level else "", node.module or "") if part)
        targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names]
    found = set()
    for target in targets:
        while target and target not in modules:
            target = target.rpartition(".")[0]
        if target and target != name:
            found.add(target)
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    graph = {}
    for name, path in modules.items():
        graph[name] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import | ast.ImportFrom):
                graph[name] |= _imported(name, node, modules)
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        on_stack.add(module)
        for other in graph.get(module, ()):
            if other not in index:
                visit(other)
                low[module] = min(low[module], low[other])
            elif other in on_stack:
                low[module] = min(low[module], index[other])
        if low[module] == index[module]:
            component = []
            while True:
                other = stack.pop()
                on_stack.discard(other)
                component.append(other)
                if other == module:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for module in sorted(graph):
        if module not in index:
            visit(module)
    return found


def test_no_import_cycle():
    graph = _graph()
    assert "builds.services.state.lifecycle" in graph and graph["builds.services.state.lifecycle"]  # the scan sees imports
    assert _cycles(graph) == []


def test_the_cycle_finder_finds_one():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_service_imports_the_celery_tasks():
    graph = _graph()
    assert [name for name, imported in graph.items()
            if name.startswith("builds.services") and "builds.tasks" in imported] == []


def test_every_import_inside_a_function_says_why():
    unexplained = []
    for path in _modules().values():
        lines = path.read_text().splitlines()
        for function in ast.walk(ast.parse("\n".join(lines))):
            if not isinstance(function, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            for node in ast.walk(function):
                if not isinstance(node, ast.Import | ast.ImportFrom):
                    continue
                # A comment on the line, or above it across the import lines of the same group.
                line = node.lineno - 1
                said = "#" in lines[line]
                while not said and line > 0:
                    line -= 1
                    above = lines[line].strip()
                    if above.startswith("#"):
                        said = True
                    elif not (above == "" or above.startswith(("import ", "from "))):
                        break
                if not said:
                    unexplained.append(f"{path.relative_to(REPO_ROOT)}:{node.lineno}")
    assert unexplained == []


def test_a_build_worker_loads_neither_drf_nor_the_http_client():
    """The build worker's process imports what it needs: the web's DRF serializers (with what
    they pull in: psycopg, pygments, about 8 MiB) and httpx (6 MiB, only where a webhook is
    posted) stay out. (DRF's app module itself is an installed app, loaded by django.setup().)"""
    code = ("import os, sys; os.environ.setdefault('DJANGO_SETTINGS_MODULE', 'hubfly.settings'); "
            "import django; django.setup(); import hubfly.celery, builds.tasks, builds.services.pipeline; "
            "print(' '.join(sorted(m for m in ('rest_framework.serializers', 'builds.api.serializers', 'httpx') if m in sys.modules)))")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True,
                            env={**os.environ, "CELERY_SKIP_CHECKS": "1"})
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == ""
