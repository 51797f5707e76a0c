"""retina_deploy.export: PyTorch -> ONNX with decode and NMS in the graph (needs the ``train`` and ``export`` extras).

- ``onnx_export``: ``ExportConfig`` and ``export_onnx(checkpoint, out, cfg)`` (``retina-deploy export-onnx``).
- ``postprocess``: the export-friendly post-processing modules (per-level TopK, constant anchors,
  NonMaxSuppression / EfficientNMS_TRT / dense outputs).
- ``metadata``: write and read the file's metadata (``read_onnx_metadata(path)``; onnx only, no torch).

Nothing is imported here, so ``retina_deploy.export.metadata`` loads without torch.
"""
