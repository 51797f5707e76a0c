"""Typed errors raised at the toolkit's boundaries (torch-free).

The CLI turns any ``RetinaDeployError`` into one line on stderr and exit status 1. Each class is
also a ``ValueError`` so callers that only know the standard library can still catch it.
"""


class RetinaDeployError(ValueError):
    """Base class of every error this toolkit raises on bad input."""


class ConfigError(RetinaDeployError):
    """A config has an unknown key, a missing key, or a value out of range."""


class CheckpointError(RetinaDeployError):
    """A checkpoint is missing, truncated, not ours, or does not match its config."""


class DatasetError(RetinaDeployError):
    """A dataset is empty, malformed, or names a file that does not exist."""


class ImageError(RetinaDeployError):
    """An image is unreadable, of a refused format, too large, or of the wrong shape or dtype."""


class ModelFileError(RetinaDeployError):
    """An ONNX or engine file is missing, truncated, foreign, or tampered with."""


class ModelOutputError(ModelFileError):
    """A backend returned outputs of the wrong shape or dtype, non-finite values, or values out of range
    (a misbehaving server, a truncated response, an FP16 overflow); the message names the backend and model."""
