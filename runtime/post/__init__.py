"""From a model's outputs to ``Detections``: host top-k + NMS for ``--nms none`` files (``host_nms``), the
reference of TensorRT's EfficientNMS plugin, and the result type (``detections``).

``host_nms`` repeats, in numpy, what the ``--nms onnx`` graph does: the runtime never imports torch, and
engines that cannot hold NMS (TensorRT-RTX) are exported without it. The C++ library has its own copy
(``runtime/cpp/src/postprocess.cpp``) for applications without Python; tests hold them to the same
detections.
"""
