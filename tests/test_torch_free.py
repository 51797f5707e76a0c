"""The runtime and the package root import without torch (a sys.modules block in a subprocess)."""

import subprocess
import sys

BLOCK_TORCH = """
import sys
class _Block:
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ImportError("torch is blocked in this test")
sys.meta_path.insert(0, _Block())
"""


def run_without_torch(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", BLOCK_TORCH + code], capture_output=True, text=True, timeout=120)


def test_block_works():
    assert run_without_torch("import torch").returncode != 0


def test_runtime_imports_without_torch():
    code = """
import importlib, pkgutil
import retina_deploy, retina_deploy.runtime
for m in pkgutil.iter_modules(retina_deploy.runtime.__path__):
    importlib.import_module("retina_deploy.runtime." + m.name)
import retina_deploy.errors, retina_deploy.fileio, retina_deploy.config, retina_deploy.evaluate
print("ok", "torch" in sys.modules)
"""
    result = run_without_torch(code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok False"
