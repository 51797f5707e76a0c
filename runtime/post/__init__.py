"""From a model's outputs to ``Detections``: host top-k + NMS for ``--nms none`` files, the EfficientNMS reference,
the result type.
"""
