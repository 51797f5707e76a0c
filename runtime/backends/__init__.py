"""Backend selection for ``Detector.load``: ONNX Runtime or OpenVINO for ``.onnx``, TensorRT for ``.engine``.

Backend names:

- ``auto``: ``.onnx`` -> ONNX Runtime with the CUDA provider if installed, else CPU (also where OpenVINO
  is installed: docs/ARCHITECTURE.md has the measurement); ``.engine`` -> the TensorRT flavour named by
  its manifest.
- ``ort-cpu``, ``ort-cuda``, ``ort-tensorrt``: ONNX Runtime with that execution provider (CUDA and
  TensorRT providers fall back to CPU for unsupported nodes, as ONNX Runtime does).
- ``openvino``: OpenVINO on the CPU (``openvino``; ``pip install 'retina-deploy[openvino]'``).
- ``tensorrt``, ``tensorrt-rtx``: an engine with that flavour (it must match the manifest).
- ``triton``: a model on a Triton Inference Server, named by a ``triton://host:port/model`` URL
  (``auto`` picks it for such a URL); see ``triton``.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from retina_deploy.core.artifacts import ENGINE_SUFFIXES, ONNX_SUFFIX
from retina_deploy.core.errors import ConfigError, ModelFileError
from retina_deploy.runtime.contract.onnx_metadata import OnnxMetadata
from retina_deploy.runtime.contract.spec import Backend, ModelSpec

ORT_PROVIDERS = {
    "ort-cpu": "CPUExecutionProvider",
    "ort-cuda": "CUDAExecutionProvider",
    "ort-tensorrt": "TensorrtExecutionProvider",
}
ONNX_BACKENDS = (*ORT_PROVIDERS, "openvino")
ENGINE_BACKENDS = ("tensorrt", "tensorrt-rtx")
BACKENDS = ("auto", *ONNX_BACKENDS, *ENGINE_BACKENDS, "triton")


class OrtBackend:
    """An ``OnnxModel`` (ONNX Runtime session) behind the Backend protocol."""

    def __init__(self, model, name: str) -> None:
        self.model = model
        self.name = name
        self.input_size: tuple[int, int] = tuple(model.metadata.input_size)
        batch_dim = model.session.get_inputs()[0].shape[0]
        hi = model.metadata.batch[2]
        # A fixed batch axis runs only that batch; a dynamic one any B >= 1 (the range is the TensorRT profile).
        self.batch_range: tuple[int, int] = (batch_dim, batch_dim) if isinstance(batch_dim, int) else (1, hi)

    def run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """float32 [B, 3, H, W] -> the graph's outputs, leading dim B."""
        if self.model is None:
            raise RuntimeError(f"the {self.name} backend is closed")
        return self.model.run(batch)

    def close(self) -> None:
        self.model = None


def gpu_index(device: str) -> int | None:
    """None for "cpu", N for "cuda:N" (0 for "cuda"); ConfigError otherwise."""
    if isinstance(device, str):
        if device == "cpu":
            return None
        head, sep, index = device.partition(":")
        if head == "cuda" and (not sep or index.isdigit()):
            return int(index or 0)
    raise ConfigError(f"device must be cpu, cuda or cuda:N, got {device!r}")


def backend_for_device(path: str | os.PathLike, backend: str, gpu: int | None) -> str:
    """``backend``, except that "auto" for an ONNX file follows the device: ort-cpu on the CPU, ort-cuda on a GPU.

    ConfigError for openvino on a GPU (it runs on the CPU only).
    """
    if backend == "openvino" and gpu is not None:
        raise ConfigError("backend 'openvino' runs on the CPU; use --device cpu")
    if backend == "auto" and str(path).endswith(ONNX_SUFFIX):
        return "ort-cpu" if gpu is None else "ort-cuda"
    return backend


def _ort_providers(backend: str, device: int) -> tuple[str, list]:
    """(backend name, providers list) for an ONNX Runtime backend name; ConfigError if not installed."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    if backend == "auto":
        backend = "ort-cuda" if "CUDAExecutionProvider" in available else "ort-cpu"
    wanted = ORT_PROVIDERS[backend]
    if wanted not in available:
        raise ConfigError(
            f"backend {backend!r} needs ONNX Runtime's {wanted}, which is not installed "
            f"(available: {', '.join(available)}); install onnxruntime-gpu or choose ort-cpu"
        )
    # Each GPU provider falls back to the next one for nodes it cannot run: TensorRT -> CUDA -> CPU.
    gpu_chain = ("TensorrtExecutionProvider", "CUDAExecutionProvider")
    chain = gpu_chain[gpu_chain.index(wanted) :] if wanted in gpu_chain else ()
    providers: list = [(p, {"device_id": int(device)}) for p in chain if p in available]
    return backend, [*providers, "CPUExecutionProvider"]


def open_onnx(path: Path, backend: str, device: int, num_threads: int | None) -> tuple[Backend, ModelSpec]:
    """An ONNX file in ONNX Runtime; its metadata gives the ModelSpec."""
    from retina_deploy.runtime.backends.ort import OnnxModel

    name, providers = _ort_providers(backend, device)
    model = OnnxModel.load(path, providers, threads=num_threads)
    return OrtBackend(model, f"onnxruntime-{name.removeprefix('ort-')}"), _spec_of(model.metadata)


def _spec_of(meta: OnnxMetadata) -> ModelSpec:
    return ModelSpec(
        class_names=tuple(meta.class_names),
        preprocess=meta.preprocess,
        nms=meta.nms,
        anchors_per_level=tuple(meta.anchors_per_level),
    )


def open_openvino(path: Path, num_threads: int | None) -> tuple[Backend, ModelSpec]:
    """An ONNX file compiled by OpenVINO for the CPU; its metadata gives the ModelSpec."""
    from retina_deploy.runtime.backends.openvino import OpenVinoBackend

    backend = OpenVinoBackend.load(path, num_threads=num_threads)
    return backend, _spec_of(backend.metadata)


def open_engine(path: Path, backend: str, device: int, cuda_graphs: bool) -> tuple[Backend, ModelSpec]:
    """A verified TensorRT engine; its manifest gives the ModelSpec."""
    from retina_deploy.runtime.backends.tensorrt import TrtBackend

    trt_backend = TrtBackend.load(
        path, device=device, flavour=None if backend == "auto" else backend, cuda_graphs=cuda_graphs
    )
    m = trt_backend.manifest
    spec = ModelSpec.from_postprocess_record(m.class_names, m.preprocess_config, m.postprocess, str(path))
    return trt_backend, spec


def open_backend(
    path: str | os.PathLike,
    backend: str = "auto",
    device: int = 0,
    *,
    cuda_graphs: bool = False,
    num_threads: int | None = None,
) -> tuple[Backend, ModelSpec]:
    """Open ``path`` with the named backend (see the module docstring); returns (backend, spec).

    Raises ConfigError (unknown backend, or one that does not fit the file's kind, or is not
    installed), ModelFileError (missing, foreign or tampered file), NoCudaDeviceError.
    """
    if backend not in BACKENDS:
        raise ConfigError(f"backend must be one of {list(BACKENDS)}, got {backend!r}")
    if str(path).startswith("triton://") or backend == "triton":
        if backend not in ("auto", "triton") or not str(path).startswith("triton://"):
            raise ConfigError(f"{path}: a Triton model is a triton://host:port/model URL (backend auto or triton)")
        from retina_deploy.runtime.backends.triton import open_triton

        return open_triton(str(path))
    p = Path(path)
    if not p.is_file():
        raise ModelFileError(f"{p}: no such model file")
    if p.suffix == ONNX_SUFFIX:
        if backend in ENGINE_BACKENDS:
            raise ConfigError(
                f"{p}: backend {backend!r} runs engines; build one with `retina-deploy build-engine` "
                "or use ort-tensorrt to run the ONNX file through ONNX Runtime's TensorRT provider"
            )
        if backend == "openvino":
            return open_openvino(p, num_threads)
        return open_onnx(p, backend, device, num_threads)
    if p.suffix in ENGINE_SUFFIXES:
        if backend in ONNX_BACKENDS:
            raise ConfigError(f"{p}: backend {backend!r} runs ONNX files, not TensorRT engines")
        return open_engine(p, backend, device, cuda_graphs)
    raise ModelFileError(f"{p}: not a model file (expected .onnx or .engine)")
