"""retina-deploy: RetinaNet from PyTorch training to TensorRT / ONNX Runtime inference.

This module stays light (no torch import) so that ``import retina_deploy.runtime`` works on
machines that only have the runtime's dependencies.

The stage folders ``export/``, ``calib/`` and ``runtime/`` sit beside this folder in a source
checkout and are subpackages of ``retina_deploy`` (pyproject's package-dir). When Python imports
this folder straight from a checkout (e.g. run from the repository root, where the folder shadows an
installed copy), the checkout's root joins ``__path__`` so those subpackages resolve to the same
checkout. An installed copy has them inside the package already, and nothing changes.
"""

from pathlib import Path as _Path

__version__ = "0.1.0"

_checkout = _Path(__file__).resolve().parent.parent
if not (_Path(__file__).resolve().parent / "runtime").is_dir() and (_checkout / "runtime" / "__init__.py").is_file():
    __path__.append(str(_checkout))  # noqa: F821 - the package's own __path__
