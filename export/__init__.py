"""retina_deploy.export: PyTorch -> ONNX with decode and NMS in the graph, and ONNX -> TensorRT engines.

- ``onnx_export``: ``ExportConfig`` and ``export_onnx(checkpoint, out, cfg)`` (``retina-deploy export-onnx``;
  needs the ``train`` and ``export`` extras).
- ``postprocess``: the export-friendly post-processing modules (per-level TopK, constant anchors,
  NonMaxSuppression / EfficientNMS_TRT / dense outputs).
- ``engine``: ``engine.builder.build_engine(onnx, cfg, out)`` (``retina-deploy build-engine``) and its steps.

Reading and writing our ONNX files (metadata included) is ``retina_deploy.runtime.contract.onnx_files``.
"""
