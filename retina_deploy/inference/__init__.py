"""Run any model: ``open_model`` (checkpoint, ONNX file, engine or Triton URL to a Detector), ``predict`` and
``bench`` over it.
"""
