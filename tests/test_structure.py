"""The data path reads downwards: ops (routing) -> a backend -> its kernels, with the shared orchestration
(fused) and math (contrast, interp, reference) below every backend. Checked on the source, lazy imports
inside functions included."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "sgc_fast"
# The op layer and what sits under it; the training system on top is free to import any of these.
CORE = ("ops", "fused", "contrast", "interp", "reference", "once", "triton")


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Every sgc_fast module ``path`` imports, at any depth of the file (``from . import x`` names x)."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("sgc_fast"))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            if not mod.startswith("sgc_fast"):
                continue
            found.add(mod)
            for alias in node.names:  # `from . import triton`: a submodule, when one exists by that name
                sub = f"{mod}.{alias.name}"
                if (ROOT.parent / Path(*sub.split("."))).with_suffix(".py").is_file() or \
                        (ROOT.parent / Path(*sub.split(".")) / "__init__.py").is_file():
                    found.add(sub)
    found.discard(name)
    return found


def _graph() -> dict[str, set[str]]:
    return {_module_name(p): _imports(p) for p in ROOT.rglob("*.py")}


def _core(name: str) -> bool:
    return name.removeprefix("sgc_fast.").split(".")[0] in CORE


def test_no_backend_imports_ops_back():
    graph = _graph()
    offenders = {m: sorted(i for i in deps if i == "sgc_fast.ops") for m, deps in graph.items()
                 if _core(m) and m != "sgc_fast.ops" and "sgc_fast.ops" in deps}
    assert not offenders, f"modules below ops.py import it back: {offenders}"


@pytest.mark.parametrize("module", ["sgc_fast.contrast", "sgc_fast.interp", "sgc_fast.reference", "sgc_fast.once"])
def test_shared_math_imports_no_backend(module):
    deps = _graph()[module]
    assert not {d for d in deps if d == "sgc_fast.ops" or d.startswith("sgc_fast.triton") or d == "sgc_fast.fused"}, deps


def test_core_import_graph_is_acyclic():
    # A submodule's import of its own package (``from . import INTERPRET``) is not an edge: Python has run the
    # package's __init__ before any of its submodules.
    graph = {m: {d for d in deps if _core(d) and not m.startswith(d + ".")} for m, deps in _graph().items()
             if _core(m)}
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for dep in sorted(graph.get(node, set())):
            if state.get(dep) == 1:
                cycle = path[path.index(dep):] + [dep] if dep in path else [node, dep]
                pytest.fail(f"import cycle among the op layer's modules: {' -> '.join(cycle)}")
            if dep not in state:
                visit(dep, path + [dep])
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert "sgc_fast.fused" in graph and "sgc_fast.triton.contrast_logits_op" in graph
