"""The layering of the package, checked on the source: what each stage folder may import, and no cycles.

- ``runtime/`` (torch-free inference) imports no torch / torchvision, no training, model or data code,
  nothing from ``export/`` or ``calib/``: only itself and the light shared modules below.
- ``calib/`` imports nothing from ``export/`` (export builds on calib, not the reverse).
- Imports between our modules form no cycle.

Every ``import`` statement counts, including those inside functions (a lazy import is still a
dependency), except those under ``if TYPE_CHECKING:`` (annotations only, never run).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = {  # import prefix -> source folder (pyproject's package-dir)
    "retina_deploy.runtime": ROOT / "runtime",
    "retina_deploy.calib": ROOT / "calib",
    "retina_deploy.export": ROOT / "export",
    "retina_deploy": ROOT / "retina_deploy",
}
SHARED = ("retina_deploy", "retina_deploy.core.errors", "retina_deploy.core.fileio", "retina_deploy.core.artifacts")
RULES = {
    # stage: (allowed prefixes of our modules, forbidden third-party top-level modules)
    "runtime": (("retina_deploy.runtime", *SHARED), ("torch", "torchvision")),
    "calib": (
        (
            "retina_deploy.calib",
            "retina_deploy.runtime",
            "retina_deploy.data",
            "retina_deploy.inference.predict",
            "retina_deploy.evaluation.metrics",
            *SHARED,
        ),
        ("torch", "torchvision"),
    ),  # fmt: skip
}


def module_name(path: Path) -> str:
    for prefix, folder in FOLDERS.items():
        if folder in path.parents:
            rel = path.relative_to(folder).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            return ".".join([prefix, *parts])
    raise ValueError(path)


def imports_of(source: str, module: str) -> list[tuple[int, str]]:
    """(line, imported module) for each import in ``source``; relative imports resolved against ``module``."""
    found = []
    for node in _runtime_nodes(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(module.split(".")[: -node.level] + ([base] if base else []))
            # ``from retina_deploy.training import run_files`` imports the submodule where there is one
            found += [(node.lineno, f"{base}.{a.name}" if _is_module(f"{base}.{a.name}") else base) for a in node.names]
    return found


def _runtime_nodes(node: ast.AST):
    """Every node below ``node`` except the bodies of ``if TYPE_CHECKING:`` blocks."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
            yield from (n for orelse in child.orelse for n in [orelse, *_runtime_nodes(orelse)])
            continue
        yield child
        yield from _runtime_nodes(child)


def _is_module(name: str) -> bool:
    for prefix, folder in FOLDERS.items():
        if name == prefix or name.startswith(prefix + "."):
            rel = Path(*name[len(prefix) + 1 :].split(".")) if name != prefix else Path()
            return (folder / rel).with_suffix(".py").is_file() or (folder / rel / "__init__.py").is_file()
    return False


def violations(source: str, module: str, stage: str) -> list[str]:
    allowed, forbidden = RULES[stage]
    bad = []
    for line, name in imports_of(source, module):
        ours = name == "retina_deploy" or name.startswith("retina_deploy.")
        # "retina_deploy" allows the package root itself (``__version__``), not everything under it
        if ours and not any(name == a or (a != "retina_deploy" and name.startswith(a + ".")) for a in allowed):
            bad.append(f"{module}:{line} imports {name}")
        if not ours and name.split(".")[0] in forbidden:
            bad.append(f"{module}:{line} imports {name}")
    return bad


def stage_files(stage: str) -> list[Path]:
    return sorted(p for p in (ROOT / stage).rglob("*.py") if "cpp" not in p.parts)


@pytest.mark.parametrize("stage", sorted(RULES))
def test_stage_imports_only_what_it_may(stage):
    files = stage_files(stage)
    assert len(files) > 5
    bad = [v for f in files for v in violations(f.read_text(encoding="utf-8"), module_name(f), stage)]
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize(
    "stage,source",
    [
        ("runtime", "import torch\n"),
        ("runtime", "def f():\n    from retina_deploy.training.run import train\n"),
        ("runtime", "from retina_deploy.export.onnx_export import export_onnx\n"),
        ("runtime", "from ..calib import int8\n"),
        ("calib", "from retina_deploy.export.engine.builder import build_engine\n"),
    ],
)
def test_a_forbidden_import_is_caught(stage, source):
    """The rule fails when a forbidden import is added, at module level or inside a function, absolute or relative."""
    assert violations(source, f"retina_deploy.{stage}.newmodule", stage)


def our_modules() -> dict[str, Path]:
    out = {}
    for folder in FOLDERS.values():
        for p in folder.rglob("*.py"):
            if "cpp" not in p.parts:
                out[module_name(p)] = p
    return out


def test_no_import_cycles_between_modules():
    modules = our_modules()
    graph = {
        name: {n for _, n in imports_of(p.read_text(encoding="utf-8"), name) if n in modules and n != name}
        for name, p in modules.items()
    }
    assert find_cycle(graph) is None, f"import cycle: {' -> '.join(find_cycle(graph))}"
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]  # the search itself works


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as a path that ends where it starts, or None (iterative depth-first search)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    for start in sorted(graph):
        if state.get(start):
            continue
        path, stack = [start], [iter(sorted(graph[start]))]
        state[start] = 1
        while stack:
            nxt = next(stack[-1], None)
            if nxt is None:
                state[path.pop()] = 2
                stack.pop()
            elif state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            elif not state.get(nxt):
                state[nxt] = 1
                path.append(nxt)
                stack.append(iter(sorted(graph.get(nxt, ()))))
    return None
