"""What a model file promises and what a backend must deliver: ONNX metadata, engine manifests, the Backend protocol,
output checks.
"""
