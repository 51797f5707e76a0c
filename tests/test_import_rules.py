"""The layering of the package, checked on the source: every folder is a layer, and a layer imports only
itself and the layers below it; no module imports another in a circle.

Layers, lowest first (``LAYERS``): the ground floor ``retina_deploy/core`` (and the package root, which
holds ``__version__`` only); the torch-free runtime, itself in layers (post-processing, images, the model
file contract, backends, the ``Detector``, then serving and benchmarking on top); the PyTorch side
(model, data); opening and scoring any model (evaluation, inference); training; the precision stages
(calib) and the exporter; the roof: demo, CLI, GPU check.

Every ``import`` statement counts: those inside functions (a lazy import is still a dependency) and
those under ``if TYPE_CHECKING:`` (a type-only import still ties the two modules together).
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
NO_TORCH = ("torch", "torchvision")
LAYERS = (  # (folder, third-party top-level modules it must not import), lowest first
    ("retina_deploy", NO_TORCH),  # the package root: __version__, nothing of ours
    ("retina_deploy/core", NO_TORCH),
    ("runtime/post", NO_TORCH),
    ("runtime/image", NO_TORCH),
    ("runtime/contract", NO_TORCH),
    ("runtime/backends", NO_TORCH),
    ("runtime", NO_TORCH),  # Detector, BatchingDetector and the public names
    ("runtime/serve", NO_TORCH),
    ("runtime/bench", NO_TORCH),
    ("retina_deploy/model", ()),
    ("retina_deploy/data", ()),
    ("retina_deploy/evaluation", ()),
    ("retina_deploy/inference", ()),
    ("retina_deploy/training", ()),
    ("calib", NO_TORCH),
    ("export", ()),
    ("export/engine", ()),
    ("retina_deploy/demo", ()),
    ("retina_deploy/cli", ()),
    ("retina_deploy/gpucheck", ()),
)
RANK = {folder: i for i, (folder, _) in enumerate(LAYERS)}
FORBIDDEN = dict(LAYERS)


def module_name(path: Path) -> str:
    for prefix, folder in FOLDERS.items():
        if folder in path.parents:
            rel = path.relative_to(folder).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            return ".".join([prefix, *parts])
    raise ValueError(path)


def layer_of(module: str) -> str:
    """The folder (a key of ``LAYERS``) that holds ``module``'s file; KeyError for a folder with no layer."""
    path = _source_path(module)
    if path is None:
        raise KeyError(module)
    where = path if path.is_dir() else path.parent  # a package's __init__ lives in its own folder
    name = where.relative_to(ROOT).as_posix()
    if name not in RANK:
        raise KeyError(f"{module}: its folder {name}/ is not in LAYERS")
    return name


def imports_of(source: str, module: str) -> list[tuple[int, str]]:
    """(line, imported module) for each import in ``source``, type-only ones included; relative imports
    resolved against ``module``."""
    found = []
    package = module if _is_package(module) else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(up + ([base] if base else []))
            # ``from retina_deploy.training import run_files`` imports the submodule where there is one
            found += [(node.lineno, f"{base}.{a.name}" if _is_module(f"{base}.{a.name}") else base) for a in node.names]
    return found


def _source_path(name: str) -> Path | None:
    for prefix, folder in FOLDERS.items():
        if name == prefix or name.startswith(prefix + "."):
            return folder.joinpath(*name[len(prefix) + 1 :].split(".")) if name != prefix else folder
    return None


def _is_package(name: str) -> bool:
    path = _source_path(name)
    return path is not None and (path / "__init__.py").is_file()


def _is_module(name: str) -> bool:
    path = _source_path(name)
    return path is not None and (path.with_suffix(".py").is_file() or (path / "__init__.py").is_file())


def violations(source: str, module: str, layer: str | None = None) -> list[str]:
    """Each import of ``source`` (module ``module`` in folder ``layer``) that reaches a higher layer or a
    third-party module the layer must not use."""
    layer = layer or layer_of(module)
    bad = []
    for line, name in imports_of(source, module):
        if name == "retina_deploy" or name.startswith("retina_deploy."):
            target = layer_of(_existing(name))
            if RANK[target] > RANK[layer]:
                bad.append(f"{module}:{line} imports {name} ({target}/ is above {layer}/)")
        elif name.split(".")[0] in FORBIDDEN[layer]:
            bad.append(f"{module}:{line} imports {name} ({layer}/ must not import {name.split('.')[0]})")
    return bad


def _existing(name: str) -> str:
    """``name``, or the nearest enclosing module that exists (``from pkg import Class`` names pkg)."""
    while not _is_module(name) and "." in name:
        name = name.rpartition(".")[0]
    return name


def our_modules() -> dict[str, Path]:
    out = {}
    for folder in FOLDERS.values():
        for p in folder.rglob("*.py"):
            if "cpp" not in p.parts:
                out[module_name(p)] = p
    return out


def test_every_module_belongs_to_a_layer():
    unplaced = []
    for name in our_modules():
        try:
            layer_of(name)
        except KeyError as e:
            unplaced.append(str(e))
    assert not unplaced, "\n".join(unplaced)
    assert {layer_of(n) for n in our_modules()} == set(RANK), "a layer in LAYERS has no modules"


def test_no_layer_imports_a_higher_one():
    bad = [v for name, p in sorted(our_modules().items()) for v in violations(p.read_text(encoding="utf-8"), name)]
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize(
    "module,source",
    [
        ("retina_deploy.core.newmodule", "from retina_deploy.runtime.detector import Detector\n"),
        ("retina_deploy.runtime.newmodule", "import torch\n"),
        ("retina_deploy.runtime.newmodule", "def f():\n    from retina_deploy.training.run import train\n"),
        ("retina_deploy.runtime.newmodule", "from retina_deploy.inference.open import open_model\n"),
        ("retina_deploy.runtime.post.newmodule", "from ..detector import Detector\n"),
        ("retina_deploy.runtime.backends.newmodule", "from retina_deploy.runtime.serve import app\n"),
        ("retina_deploy.runtime.contract.newmodule", "if TYPE_CHECKING:\n    from ..backends.ort import OnnxModel\n"),
        ("retina_deploy.calib.newmodule", "from retina_deploy.export.engine.builder import build_engine\n"),
        ("retina_deploy.model.newmodule", "from retina_deploy.cli import main\n"),
        ("retina_deploy.demo.newmodule", "from retina_deploy.cli.train import run_train\n"),
    ],
)
def test_a_forbidden_import_is_caught(module, source):
    """The rule fails when a forbidden import is added: at module level, inside a function or type-only,
    absolute or relative."""
    assert violations(source, module)


def test_an_allowed_import_passes():
    source = "from retina_deploy.runtime.contract.spec import Backend\nfrom ..image import preprocess\n"
    assert not violations(source, "retina_deploy.runtime.backends.newmodule", "runtime/backends")


def test_no_import_cycles_between_modules():
    modules = our_modules()
    graph = {
        name: {_existing(n) for _, n in imports_of(p.read_text(encoding="utf-8"), name)} & set(modules) - {name}
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
