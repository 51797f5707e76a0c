"""RetinaNet in PyTorch (needs the ``train`` extra), its config, checkpoints and weight conversion.

``ModelConfig`` (``config``) and checkpoint metadata import without torch; ``RetinaNet`` and
``build_model`` load torch on first use, so ``import retina_deploy.model.config`` stays torch-free.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

__all__ = ["RetinaNet", "build_model"]

if TYPE_CHECKING:
    from retina_deploy.model.retinanet import RetinaNet, build_model


def __getattr__(name: str):
    if name in __all__:
        from retina_deploy.model import retinanet

        return getattr(retinanet, name)
    raise AttributeError(f"module 'retina_deploy.model' has no attribute {name!r}")
