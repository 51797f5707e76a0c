"""TensorRT backend: one interface over ``tensorrt`` (10.x / 11.x) and ``tensorrt_rtx``, with cuda-python.

Loading order is the safety order: the manifest and the sha256 of the engine bytes are checked
before any TensorRT code sees them, then the installed library version and the GPU are compared
with the manifest (and TensorRT-RTX's supported GPUs), then (where the library offers it) TensorRT's
own validity check runs, and only then are the bytes deserialized, the plugin registry initialised.
Inference uses pinned host buffers, one non-blocking stream, asynchronous copies and the
tensor-address API (``set_tensor_address`` + ``execute_async_v3``), the GPU selected on the calling
thread at every run; with ``cuda_graphs=True`` each batch size is captured once after a warm-up run
on a context of its own, a failed capture recorded in ``graph_status`` (TensorRT-RTX uses its
built-in whole-graph capture instead, which handles its shape-specialized kernels, and keeps the
kernels it compiles in a runtime cache file).
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import os
import threading
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import numpy as np

from retina_deploy.core.errors import ConfigError, ModelFileError
from retina_deploy.runtime.backends.cuda_mem import (
    CudaError,
    DeviceBuffer,
    EventTimer,
    NoCudaDeviceError,
    PinnedArray,
    Stream,
    check,
    import_cudart,
    select_device,
)
from retina_deploy.runtime.backends.trt_support import (
    RuntimeCacheFile,
    UnsupportedGpuError,
    check_flavour_runs_here,
    deserialize,
    make_logger,
    runtime_cache_path,
)
from retina_deploy.runtime.contract.manifest import EngineManifest, check_compatible, read_verified_engine

FLAVOUR_MODULES = {"tensorrt": "tensorrt", "tensorrt-rtx": "tensorrt_rtx"}
_EXTRAS = {"tensorrt": "trt", "tensorrt-rtx": "rtx"}


class TensorRTUnavailableError(ModelFileError):
    """The engine's TensorRT flavour is not installed here."""


def installed_flavours() -> list[str]:
    """The TensorRT flavours importable here, e.g. ["tensorrt-rtx"]."""
    return [f for f, mod in FLAVOUR_MODULES.items() if importlib.util.find_spec(mod) is not None]


def import_tensorrt(flavour: str) -> ModuleType:
    """Import the module of ``flavour`` ("tensorrt" or "tensorrt-rtx"); a typed error if it is missing."""
    if flavour not in FLAVOUR_MODULES:
        raise ConfigError(f"TensorRT flavour must be one of {list(FLAVOUR_MODULES)}, got {flavour!r}")
    try:
        return importlib.import_module(FLAVOUR_MODULES[flavour])
    except ImportError as e:
        have = installed_flavours() or ["none"]
        raise TensorRTUnavailableError(
            f"{flavour} is not installed (installed: {', '.join(have)}); "
            f"pip install 'retina-deploy[{_EXTRAS[flavour]}]', or rebuild the engine with the installed flavour"
        ) from e


@dataclass(frozen=True)
class TensorSpec:
    """One engine I/O tensor. shape: the engine's dims (-1 dynamic); profile: (min, opt, max) for inputs."""

    name: str
    is_input: bool
    dtype: np.dtype
    shape: tuple[int, ...]
    profile: tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]] | None = None


def describe_io(engine: Any, trt: ModuleType) -> list[TensorSpec]:
    """The I/O tensors of a deserialized engine, via the TensorRT 10+ name-based API."""
    specs = []
    for i in range(engine.num_io_tensors):
        name = engine.get_tensor_name(i)
        is_input = engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT
        profile = None
        if is_input:
            profile = tuple(tuple(int(d) for d in dims) for dims in engine.get_tensor_profile_shape(name, 0))
        specs.append(
            TensorSpec(
                name=name,
                is_input=is_input,
                dtype=np.dtype(trt.nptype(engine.get_tensor_dtype(name))),
                shape=tuple(int(d) for d in engine.get_tensor_shape(name)),
                profile=profile,
            )
        )
    return specs


def check_io(specs: list[TensorSpec], manifest: EngineManifest, path: str) -> tuple[TensorSpec, list[TensorSpec]]:
    """Check the engine's I/O against its manifest: one image input [B, 3, H, W] with the manifest's
    H, W and batch range, outputs static except the batch. Returns (input, outputs)."""
    inputs = [s for s in specs if s.is_input]
    outputs = [s for s in specs if not s.is_input]
    if len(inputs) != 1 or not outputs:
        raise ModelFileError(f"{path}: expected 1 input and >= 1 outputs, got {[s.name for s in specs]}")
    inp = inputs[0]
    h, w = manifest.input_size
    if len(inp.shape) != 4 or tuple(inp.shape[1:]) != (3, h, w):
        raise ModelFileError(f"{path}: input {inp.name} has shape {list(inp.shape)}, manifest says [B, 3, {h}, {w}]")
    lo, _, hi = manifest.batch_range
    if inp.profile is None or (inp.profile[0][0], inp.profile[2][0]) != (lo, hi):
        raise ModelFileError(f"{path}: engine batch profile {inp.profile} differs from manifest batch range {lo}..{hi}")
    for out in outputs:
        if not out.shape or any(d < 0 for d in out.shape[1:]):
            raise ModelFileError(f"{path}: output {out.name} shape {list(out.shape)} is not static past the batch")
    return inp, outputs


@dataclass
class _Binding:
    spec: TensorSpec
    host: PinnedArray
    device: DeviceBuffer | None


class TrtBackend:
    """A verified engine on one GPU. ``run(batch float32 [B, 3, H, W]) -> {output name: array [B, ...]}``.

    Use ``TrtBackend.load``; thread-safe (one lock around each run); call ``close()`` to free the GPU
    memory and stream. With ``cuda_graphs`` on a ``tensorrt`` engine, each batch size seen is captured
    once into a CUDA graph on an execution context of its own (a graph is only valid with the context
    state it was captured with), so each captured size costs one more context's activation memory.
    """

    def __init__(
        self,
        *,
        trt,
        manifest,
        runtime,
        engine,
        inp,
        outputs,
        cuda_graphs: bool,
        path: str,
        device: int = 0,
        runtime_cache: str | os.PathLike | bool = False,
    ) -> None:
        self.trt = trt
        self.device = int(device)
        self.manifest = manifest
        self.name = manifest.flavour
        self.path = path
        self.input_size: tuple[int, int] = manifest.input_size
        self.batch_range: tuple[int, int] = (inp.profile[0][0], inp.profile[2][0])
        self.output_names = tuple(o.name for o in outputs)
        self._cudart = import_cudart()
        self._runtime, self._engine = runtime, engine
        self._lock = threading.Lock()
        self._manual_graphs = cuda_graphs and manifest.flavour == "tensorrt"
        self._cuda_graphs = cuda_graphs
        self._graphs: dict[int, tuple[Any, Any]] = {}  # batch -> (its context, graph exec)
        self._no_graph: dict[int, str] = {}  # batch -> why its capture failed (it runs without a graph)
        self._bindings: list[_Binding] = []
        self._context = self._stream = None
        self._events: EventTimer | None = None
        self.last_timings_s: dict[str, float] | None = None
        cache_path = runtime_cache_path(path, runtime_cache) if manifest.flavour == "tensorrt-rtx" else None
        self._runtime_cache: RuntimeCacheFile | None = None
        try:
            self._stream = Stream(self._cudart)
            self._allocate([inp, *outputs])
            if cache_path is not None:  # after the first CUDA calls: deserializing it needs a current context
                self._runtime_cache = RuntimeCacheFile(cache_path, self._engine.create_runtime_config())
            self._context = self._new_context(cuda_graphs and manifest.flavour == "tensorrt-rtx")
        except BaseException:
            self.close()
            raise
        self._batch = -1

    @classmethod
    def load(
        cls,
        path: str | os.PathLike,
        *,
        device: int = 0,
        flavour: str | None = None,
        cuda_graphs: bool = False,
        runtime_cache: str | os.PathLike | bool = True,
    ) -> TrtBackend:
        """Verify and load ``path`` on GPU ``device``; ``flavour`` None follows the manifest.

        runtime_cache (TensorRT-RTX): the file its JIT-compiled kernels are kept in between processes
        (True: ``<engine>.rtx-cache`` beside the engine; False: none), read here and written by ``close``.

        Raises ModelFileError (missing/foreign/tampered engine or manifest, version or GPU mismatch:
        the message says to rebuild), TensorRTUnavailableError, NoCudaDeviceError (UnsupportedGpuError:
        a GPU the flavour does not run on).
        """
        path = str(path)
        manifest, data = read_verified_engine(path)  # sha256 before any TensorRT code runs
        check_compatible(manifest, path, flavour=flavour)
        trt = import_tensorrt(manifest.flavour)
        check_compatible(manifest, path, trt_version=trt.__version__)
        gpu_name, capability = select_device(import_cudart(), device)
        check_flavour_runs_here(trt, manifest.flavour, capability, gpu_name, path)
        check_compatible(manifest, path, gpu_name=gpu_name, compute_capability=capability)
        runtime, engine = deserialize(trt, data, path, make_logger(trt))
        inp, outputs = check_io(describe_io(engine, trt), manifest, path)
        return cls(
            trt=trt,
            manifest=manifest,
            runtime=runtime,
            engine=engine,
            inp=inp,
            outputs=outputs,
            cuda_graphs=cuda_graphs,
            path=path,
            device=device,
            runtime_cache=runtime_cache,
        )

    def _allocate(self, specs: list[TensorSpec]) -> None:
        """Pinned host + device buffers for the largest batch, one pair per I/O tensor."""
        hi = self.batch_range[1]
        for spec in specs:
            host = PinnedArray(self._cudart, (hi, *spec.shape[1:]), spec.dtype)
            self._bindings.append(_Binding(spec, host, None))
            self._bindings[-1].device = DeviceBuffer(self._cudart, host.nbytes)

    def _new_context(self, rtx_graphs: bool = False) -> Any:
        """An execution context with every tensor address bound (they never change)."""
        cache = self._runtime_cache
        if rtx_graphs or cache is not None:  # TensorRT-RTX: its runtime config
            config = self._engine.create_runtime_config()
            if rtx_graphs:  # TensorRT-RTX captures and replays graphs itself, per shape
                config.cuda_graph_strategy = self.trt.CudaGraphStrategy.WHOLE_GRAPH_CAPTURE
            if cache is not None:
                cache.attach(config)
            context = self._engine.create_execution_context(config)
        else:
            context = self._engine.create_execution_context()
        if context is None:
            raise ModelFileError(f"{self.path}: TensorRT could not create an execution context (out of GPU memory?)")
        for binding in self._bindings:
            if not context.set_tensor_address(binding.spec.name, binding.device.ptr):
                raise ModelFileError(f"{self.path}: set_tensor_address({binding.spec.name}) failed")
        return context

    def run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """Run one batch: float32 [B, 3, H, W] with B in ``batch_range`` -> outputs [B, ...] (copies)."""
        h, w = self.input_size
        lo, hi = self.batch_range
        if batch.ndim != 4 or tuple(batch.shape[1:]) != (3, h, w) or not lo <= batch.shape[0] <= hi:
            raise ValueError(f"batch must be [B, 3, {h}, {w}] with {lo} <= B <= {hi}, got {list(batch.shape)}")
        b = int(batch.shape[0])
        with self._lock:
            if self._context is None:
                raise RuntimeError(f"{self.path}: the backend is closed")
            # The current device is per host thread: a batcher or server thread must select it itself.
            check(self._cudart, self._cudart.cudaSetDevice(self.device), f"cudaSetDevice({self.device})")
            inp, outputs = self._bindings[0], self._bindings[1:]
            inp.host.array[:b] = batch
            events = self._events
            if events is not None:
                events.mark(0)
            self._stream.copy_to_device(inp.device.ptr, inp.host.ptr, inp.host.array[:b].nbytes)
            if events is not None:
                events.mark(1)
            self._execute(b)
            if events is not None:
                events.mark(2)
            for out in outputs:
                self._stream.copy_to_host(out.host.ptr, out.device.ptr, out.host.array[:b].nbytes)
            if events is not None:
                events.mark(3)
            self._stream.synchronize()
            if events is not None:
                self.last_timings_s = events.elapsed_s()
            result = {out.spec.name: out.host.array[:b].copy() for out in outputs}
            if self._manual_graphs and b not in self._graphs and b not in self._no_graph:
                self._capture(b)
        return result

    def enable_phase_timing(self) -> None:
        """Record CUDA events around each run's copies and execution; ``last_timings_s`` then holds
        {"h2d", "compute", "d2h": seconds of GPU time} of the latest run (``retina-deploy bench``)."""
        with self._lock:
            if self._events is None and self._stream is not None:
                self._events = EventTimer(self._cudart, self._stream, ("h2d", "compute", "d2h"))

    def _execute(self, b: int) -> None:
        if b in self._graphs:
            self._stream.launch(self._graphs[b][1])
            return
        if b != self._batch:
            name = self._bindings[0].spec.name
            if not self._context.set_input_shape(name, (b, 3, *self.input_size)):
                raise ModelFileError(f"{self.path}: set_input_shape({name}, batch {b}) was refused")
            self._batch = b
        if not self._context.execute_async_v3(self._stream.ptr):
            raise RuntimeError(f"{self.path}: execute_async_v3 failed at batch {b}")

    @property
    def runtime_cache_note(self) -> str | None:
        """What happened to TensorRT-RTX's runtime cache file (created / reused / replaced / left alone)."""
        return None if self._runtime_cache is None else self._runtime_cache.note

    def graph_status(self, batch: int) -> str | None:
        """Whether ``batch`` runs as a CUDA graph: None (graphs off), "captured", "not captured yet",
        "not captured: WHY" (it runs without a graph), or "built-in" (TensorRT-RTX captures by itself)."""
        if not self._cuda_graphs:
            return None
        if not self._manual_graphs:
            return "built-in (TensorRT-RTX captures and replays per shape)"
        if batch in self._graphs:
            return "captured"
        return f"not captured: {self._no_graph[batch]}" if batch in self._no_graph else "not captured yet"

    def _capture(self, b: int) -> None:
        """Capture batch ``b`` on a context of its own: one warm-up run, then stream capture.

        The input buffer still holds this batch, so the warm-up rewrites the same outputs. Any
        failure leaves batch ``b`` on the ordinary path, its reason in ``graph_status``; a result is
        never lost to it.
        """
        context = None
        try:
            context = self._new_context()
            if not context.set_input_shape(self._bindings[0].spec.name, (b, 3, *self.input_size)):
                raise ModelFileError("set_input_shape refused")
            capturable = getattr(context, "is_stream_capturable", None)
            if capturable is not None and not capturable(self._stream.ptr):
                raise ModelFileError("context is not stream-capturable")
            if not context.execute_async_v3(self._stream.ptr):  # warm-up: deferred per-shape setup
                raise ModelFileError("warm-up execute_async_v3 failed")
            self._stream.synchronize()
            self._stream.begin_capture()
            try:
                ok = context.execute_async_v3(self._stream.ptr)
            except Exception:  # the capture must be ended whatever TensorRT raised
                ok = False
            if not ok:
                self._stream.abort_capture()
                raise ModelFileError("execute_async_v3 failed during capture")
            self._graphs[b] = (context, self._stream.end_capture())
        except (CudaError, ModelFileError) as e:
            self._no_graph[b] = str(e)
            with contextlib.suppress(CudaError):
                self._stream.synchronize()

    def close(self) -> None:
        """Free graphs, contexts, buffers and the stream, then the engine; idempotent."""
        with self._lock:
            if self._stream is not None:  # on this backend's device, whichever thread closes it
                with contextlib.suppress(CudaError):
                    check(self._cudart, self._cudart.cudaSetDevice(self.device), f"cudaSetDevice({self.device})")
            if self._runtime_cache is not None and self._context is not None:
                self._runtime_cache.save()  # the kernels compiled so far, for the next process
            for _, graph in self._graphs.values():
                self._stream.destroy_graph(graph)
            self._graphs.clear()
            self._context = None  # contexts go before the memory they point at
            if self._events is not None:
                self._events.destroy()
                self._events = None
            for binding in self._bindings:
                binding.host.free()
                if binding.device is not None:
                    binding.device.free()
            self._bindings = []
            if self._stream is not None:
                self._stream.destroy()
                self._stream = None
            self._engine = self._runtime = None


__all__ = [
    "NoCudaDeviceError",
    "TensorRTUnavailableError",
    "TensorSpec",
    "TrtBackend",
    "UnsupportedGpuError",
    "check_io",
    "describe_io",
    "deserialize",
    "import_tensorrt",
    "installed_flavours",
]
