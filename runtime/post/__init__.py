"""From a model's outputs to ``Detections``: host top-k + NMS for ``--nms none`` files (``host_nms`` in numpy,
``native`` in C++), the reference of TensorRT's EfficientNMS plugin, and the result type (``detections``).

``host_nms`` repeats, in numpy, what the ``--nms onnx`` graph does: the runtime never imports torch, and
engines that cannot hold NMS (TensorRT-RTX) are exported without it. The C++ library's copy
(``runtime/cpp/src/postprocess.cpp``) serves applications without Python and, built into the extension
``_native`` where the install had a compiler, the ``Detector`` (``native.host_post``); tests hold them to the
same detections.
"""
