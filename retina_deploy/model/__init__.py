"""RetinaNet in PyTorch (needs the ``train`` extra)."""

from retina_deploy.model.retinanet import RetinaNet, build_model

__all__ = ["RetinaNet", "build_model"]
