"""retina-deploy: RetinaNet from PyTorch training to TensorRT / ONNX Runtime inference.

This module stays light (no torch import) so that ``import retina_deploy.runtime`` works on
machines that only have the runtime's dependencies.
"""

__version__ = "0.1.0"
