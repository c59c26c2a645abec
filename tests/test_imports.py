"""The import graph of our own modules: no circle, and Gradio only in the UI layer.

An AST walk over ``axon_core/`` (every ``import`` statement, also those inside
functions, where a circle hides best), the UI layer (``ui/``) and ``app.py``;
no module is imported to build the graph. Then one fresh interpreter imports
every ``axon_core`` module and checks Gradio never got loaded.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("axon_core", "ui")
UI_ONLY = {"gradio", "gradio_client", "spaces", "app", "ui"}  # what axon_core must never import


def module_files() -> dict[str, Path]:
    """``{dotted name: file}`` for app.py and every module of our packages."""
    found = {"app": ROOT / "app.py"}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


def imported_names(name: str, path: Path) -> set[str]:
    """Every module ``name`` imports (absolute dotted names; ``from x import y``
    counts as ``x`` and, where ``x.y`` is a module, as ``x.y``)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(base + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            out.add(base)
            out.update(f"{base}.{alias.name}" for alias in node.names)
    return out


def our_graph() -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    """(edges between our modules, every top-level package each module imports)."""
    files = module_files()
    edges, tops = {}, {}
    for name, path in files.items():
        names = imported_names(name, path)
        edges[name] = {n for n in names if n in files and n != name}
        tops[name] = {n.split(".")[0] for n in names}
    return edges, tops


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """A cycle of ``edges`` as a list of modules (first == last), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(edges):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_the_cycle_finder_sees_a_circle_through_a_function_local_import(tmp_path):
    """The check itself: the old residuals ↔ architectures circle (one side
    imported inside a function) is found."""
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from .b import thing\n")
    (pkg / "b.py").write_text("def thing():\n    from .a import other\n")
    names = {"pkg.a": pkg / "a.py", "pkg.b": pkg / "b.py"}
    edges = {n: {m for m in imported_names(n, p) if m in names and m != n} for n, p in names.items()}
    assert find_cycle(edges) in (["pkg.a", "pkg.b", "pkg.a"], ["pkg.b", "pkg.a", "pkg.b"])
    assert find_cycle({"x": {"y"}, "y": {"z"}, "z": set()}) is None


def test_our_import_graph_has_no_cycle():
    edges, _ = our_graph()
    assert "axon_core.residuals" in edges and "axon_core.architectures" in edges["axon_core.residuals"]
    assert find_cycle(edges) is None, " → ".join(find_cycle(edges))


def test_axon_core_never_imports_gradio_or_the_ui():
    _, tops = our_graph()
    core = {name: t & UI_ONLY for name, t in tops.items() if name.split(".")[0] == "axon_core"}
    assert len(core) > 20
    assert {name: bad for name, bad in core.items() if bad} == {}
    assert "gradio" in tops["app"]  # the walk does see a Gradio import where there is one


def test_importing_all_of_axon_core_loads_no_gradio():
    """Not our imports only: no library axon_core pulls in brings Gradio along."""
    names = sorted(n for n in module_files() if n.split(".")[0] == "axon_core" and not n.endswith("__main__"))
    code = ("import importlib, sys\n"
            f"for name in {names!r}:\n    importlib.import_module(name)\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('gradio', 'spaces')))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "[]"
