"""The layout is the architecture: the core imports nothing of the application, and no module imports itself
back through others (no import circles), whether the import is at the top of a module or inside a function."""

import ast
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[1]
#: top-level folder -> the package it installs as (pyproject.toml's package-dir)
FOLDERS = {"sqs_pyro": "sqs_pyro", "models": "sqs_pyro.models", "guides": "sqs_pyro.guides",
           "analysis": "sqs_pyro.analysis"}
APPLICATION = ("sqs_pyro.run", "sqs_pyro.baselines", "sqs_pyro.analysis")


def _modules():
    mods = {}
    for folder, package in FOLDERS.items():
        for path in (ROOT / folder).rglob("*.py"):
            parts = [package, *path.relative_to(ROOT / folder).with_suffix("").parts]
            if parts[-1] == "__init__":
                parts = parts[:-1]
            mods[".".join(parts)] = path
    return mods


def _imports(mods):
    """``module -> set of project modules it imports`` (relative imports resolved; ``from pkg import mod`` is mod)."""
    edges = {}
    for name, path in mods.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        out = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                base = package.split(".")
                base = base[: len(base) - node.level + 1] if node.level else []
                module = ".".join(base + ([node.module] if node.module else []))
                for alias in node.names:
                    full = f"{module}.{alias.name}"
                    out.add(full if full in mods else module)
            elif isinstance(node, ast.Import):
                out.update(alias.name for alias in node.names)
        edges[name] = {m for m in out if m in mods and m != name}
    return edges


def _circles(edges):
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, found, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                on.discard(w)
                component.add(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(component)

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def test_no_import_circles():
    assert _circles(_imports(_modules())) == []


def test_the_core_imports_nothing_of_the_application():
    edges = _imports(_modules())
    core = [m for m in edges if not m.startswith(APPLICATION) and m != "sqs_pyro.__main__"]  # python -m sqs_pyro
    assert "sqs_pyro.elbo" in core and "sqs_pyro.guides.sqs_guide" in core and "sqs_pyro.run.cli" not in core
    upward = {m: sorted(t for t in edges[m] if t.startswith(APPLICATION)) for m in core}
    assert {m: t for m, t in upward.items() if t} == {}


def test_the_finder_sees_a_circle():
    assert _circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [{"a", "b", "c"}]
