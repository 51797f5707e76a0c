"""ONNX -> TensorRT engine: ``build_engine(onnx, cfg, out)`` (``retina-deploy build-engine``), its steps, precision
and flavours.
"""
