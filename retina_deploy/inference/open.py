"""``open_model``: the one function that opens any model as a runtime ``Detector``.

A checkpoint folder runs in PyTorch (``TorchBackend``); a ``.onnx`` file, a ``.engine`` or a
``triton://host:port/model`` URL runs in the runtime's backends (``Detector.load``). The device
decides the backend here and nowhere else: "cpu" or "cuda[:N]" picks, for ``backend="auto"``,
PyTorch on that device for a checkpoint and ONNX Runtime's CPU or CUDA provider for an ONNX file;
engines run on GPU N (default 0).

Backend names live in two places only: the runtime's (``runtime.backends.BACKENDS``) and
"torch" for checkpoints, added here; every CLI choice list is read from ``BACKENDS`` / ``FITS`` below.
"""

from __future__ import annotations

import os

from retina_deploy.core.argcheck import int_at_least
from retina_deploy.core.artifacts import model_kind
from retina_deploy.core.errors import ConfigError
from retina_deploy.runtime import backends as runtime_backends
from retina_deploy.runtime.detector import Detector
from retina_deploy.runtime.image.image_io import DEFAULT_MAX_PIXELS

TORCH = "torch"  # a checkpoint folder in PyTorch (eager, or torch.compile with compile_model)
FITS = {  # model kind -> the backend names that run it
    "checkpoint": ("auto", TORCH),
    "onnx": ("auto", *runtime_backends.ONNX_BACKENDS),
    "engine": ("auto", *runtime_backends.ENGINE_BACKENDS),
    "triton": ("auto", "triton"),
}
BACKENDS = (*runtime_backends.BACKENDS, TORCH)
_KIND_NAMES = {"checkpoint": "a checkpoint", "onnx": "an ONNX file", "engine": "an engine", "triton": "a Triton model"}
TRITON_SCHEME = "triton://"


def open_model(
    path: str | os.PathLike,
    *,
    device: str = "cpu",
    backend: str = "auto",
    num_threads: int | None = None,
    cuda_graphs: bool = False,
    compile_model: bool = False,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> Detector:
    """A ``Detector`` for a checkpoint folder, ``.onnx``, ``.engine`` or ``triton://host:port/model``.

    device: "cpu", "cuda" or "cuda:N" (engines always run on GPU N; a Triton URL ignores it).
    backend: a name of ``BACKENDS`` fitting the model's kind (``FITS``); "auto" follows ``device``.
    num_threads: intra-op threads of PyTorch, ONNX Runtime or OpenVINO (None: theirs).
    cuda_graphs: engines replay CUDA graphs (other models: no effect). compile_model: checkpoints run
        through ``torch.compile`` (ConfigError for any other model).
    max_pixels: largest image (width * height) the Detector accepts.

    Raises ConfigError (bad device, absent CUDA device, a backend that does not fit the model),
    ModelFileError / CheckpointError (missing, foreign or tampered model), NoCudaDeviceError.
    """
    gpu = device_gpu(device)
    int_at_least("max_pixels", max_pixels, 1)  # before a checkpoint's (slow) load; num_threads: checked by each loader
    if backend not in BACKENDS:
        raise ConfigError(f"backend must be one of {list(BACKENDS)}, got {backend!r}")
    kind = "triton" if str(path).startswith(TRITON_SCHEME) else model_kind(path)
    if backend not in FITS[kind]:
        fit = " or ".join(b for b in FITS[kind] if b != "auto")
        raise ConfigError(f"{path}: backend {backend!r} does not run {_KIND_NAMES[kind]} (use auto or {fit})")
    if compile_model and kind != "checkpoint":
        raise ConfigError(f"{path}: torch.compile runs checkpoints only, not {_KIND_NAMES[kind]}")
    if kind == "checkpoint":
        return _open_checkpoint(path, gpu, device, num_threads, compile_model, max_pixels)
    if kind == "triton":  # the server picks its own device
        return Detector.load(str(path), backend=backend, max_pixels=max_pixels)
    return Detector.load(
        path,
        backend=runtime_backends.backend_for_device(path, backend, gpu),
        device=gpu or 0,
        cuda_graphs=cuda_graphs,
        max_pixels=max_pixels,
        num_threads=num_threads,
    )


def resolved_backend(path: str | os.PathLike, backend: str, device: str) -> str:
    """``backend``, with "auto" for an ONNX file replaced by the one ``device`` picks: ort-cpu on the CPU,
    ort-cuda on a GPU. ConfigError for a bad device, or openvino on a GPU (it runs on the CPU only)."""
    return runtime_backends.backend_for_device(path, backend, device_gpu(device))


def device_gpu(device: str) -> int | None:
    """The GPU index ``device`` names: None for "cpu", N for "cuda:N" (0 for "cuda"); ConfigError otherwise."""
    return runtime_backends.gpu_index(device)


def _open_checkpoint(path, gpu: int | None, device: str, num_threads, compile_model: bool, max_pixels) -> Detector:
    import torch

    from retina_deploy.inference.torch_backend import TorchBackend

    if gpu is not None and not (torch.cuda.is_available() and gpu < torch.cuda.device_count()):
        raise ConfigError(f"device {device!r}: no such CUDA device here (checkpoints run on cpu or a CUDA GPU)")
    backend, spec = TorchBackend.from_checkpoint(
        path, device="cpu" if gpu is None else f"cuda:{gpu}", num_threads=num_threads, compile_model=compile_model
    )
    return Detector(backend, spec, max_pixels=max_pixels, source=os.fspath(path))
