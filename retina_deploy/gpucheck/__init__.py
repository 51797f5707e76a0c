"""The GPU check: one command that exercises every GPU path of the toolkit and writes one JSON report.

``python -m retina_deploy.gpucheck [--quick] [--out DIR] [--parts ...]`` (``make gpu-check``). Each part
(training with AMP and DDP, resume, PyTorch and torch.compile latency, ONNX Runtime's GPU providers,
TensorRT engines with ``Detector``, the C++ runtime) records "ok", "skipped" (and why), "failed" or
"error"; see ``report.py`` for the record and ``check.py`` for the run.
"""
