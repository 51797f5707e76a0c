"""A non-editable install has every module, and is usable from the repository root.

``pip install .`` maps the stage folders (export/, calib/, runtime/) into the one ``retina_deploy``
namespace, and builds the C++ host post-processing (setup.py) where a compiler is. From the repository
root the source folder ``retina_deploy/`` comes first on sys.path and shadows the installed copy;
``retina_deploy/__init__.py`` then resolves the stage folders in the checkout
(``python -c "import retina_deploy.runtime"`` must work there as anywhere else).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCES = {"retina_deploy": ROOT / "retina_deploy", "export": ROOT / "export", "calib": ROOT / "calib",
           "runtime": ROOT / "runtime"}  # fmt: skip
IMPORT = (
    "import retina_deploy.runtime, retina_deploy.calib, retina_deploy.export; print(retina_deploy.runtime.__file__)"  # noqa: E501
)


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """The project installed (no dependencies, no download) into a folder of its own."""
    target, src = tmp_path_factory.mktemp("site"), tmp_path_factory.mktemp("src")
    for name in ("pyproject.toml", "setup.py", "README.md"):  # a copy: setuptools writes build/ into the source tree
        shutil.copy(ROOT / name, src)
    for name in SOURCES:  # runtime/cpp holds the extension's sources
        shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.so"))
    cmd = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--target", str(target),
           str(src)]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=target)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return target


def python_without_site(code: str, cwd: Path, path: Path) -> subprocess.CompletedProcess:
    """Python with only ``path`` (the install) on sys.path besides the working folder: no editable finder."""
    env = {**os.environ, "PYTHONPATH": str(path)}
    return subprocess.run([sys.executable, "-S", "-c", code], capture_output=True, text=True, timeout=60, cwd=cwd,
                          env=env)  # fmt: skip


def test_every_module_is_installed(installed):
    for sub, folder in SOURCES.items():
        dest = installed / "retina_deploy" / ("" if sub == "retina_deploy" else sub)
        expected = {p.relative_to(folder) for p in folder.rglob("*.py") if "cpp" not in p.parts}
        got = {p.relative_to(dest) for p in dest.rglob("*.py")} if dest.is_dir() else set()
        if sub == "retina_deploy":  # the stage folders are installed inside the package
            got = {p for p in got if p.parts[0] not in ("export", "calib", "runtime")}
        assert expected == got, f"{sub}: missing from the install {sorted(map(str, expected - got))}"


def test_the_install_has_the_cpp_host_post_processing(installed, tmp_path):
    from retina_deploy.runtime.post import native

    if not native.available():
        pytest.skip("this checkout's own install has no C++ extension (no compiler): nothing to compare")
    built = list((installed / "retina_deploy" / "runtime" / "post").glob("_native*"))
    assert len(built) == 1, built
    assert not list(installed.rglob("*.cpp")), "C++ sources are the extension's, not package data"
    code = "from retina_deploy.runtime.post import _native; print(_native.__file__)"
    proc = python_without_site(code, tmp_path, installed)
    assert proc.returncode == 0, proc.stderr
    assert Path(proc.stdout.strip()) == built[0]


def test_installed_copy_imports_elsewhere(installed, tmp_path):
    proc = python_without_site(IMPORT, tmp_path, installed)
    assert proc.returncode == 0, proc.stderr
    assert Path(proc.stdout.strip()).is_relative_to(installed)


def test_repository_root_shadowing_the_install_still_imports(installed):
    proc = python_without_site(IMPORT, ROOT, installed)
    assert proc.returncode == 0, proc.stderr
    assert Path(proc.stdout.strip()) == ROOT / "runtime" / "__init__.py"  # the checkout's, consistently
