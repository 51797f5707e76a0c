"""Thin, checked wrappers over the CUDA runtime API of ``cuda-python`` (torch-free).

Every cudart call returns ``(err, *values)``; ``check`` turns a non-success ``err`` into a
``CudaError`` naming the call, so no failure passes silently. Only what the TensorRT backend needs:
device queries, one stream, pinned host buffers (numpy views over page-locked memory), device
buffers, asynchronous copies and CUDA graphs.
"""

from __future__ import annotations

import ctypes
from types import ModuleType
from typing import Any

import numpy as np

from retina_deploy.core.errors import RetinaDeployError


class CudaError(RuntimeError):
    """A CUDA runtime call failed (the message names the call and CUDA's error string)."""


class NoCudaDeviceError(RetinaDeployError):
    """cuda-python is missing, no driver is loaded, or the requested device does not exist."""


def import_cudart() -> ModuleType:
    """The cudart module: ``cuda.bindings.runtime`` (cuda-python >= 12.6) or the older ``cuda.cudart``."""
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        try:
            from cuda import cudart  # cuda-python < 12.6
        except ImportError as e:
            raise NoCudaDeviceError(
                "the TensorRT backend needs cuda-python: pip install 'retina-deploy[trt]' or '[rtx]'"
            ) from e
    return cudart


def check(cudart: ModuleType, result: Any, what: str) -> Any:
    """Unpack ``(err, *values)`` from a cudart call; raise CudaError unless err is cudaSuccess.

    Returns None, the single value, or a tuple of values.
    """
    if not isinstance(result, tuple):
        result = (result,)
    err, values = result[0], result[1:]
    if err != cudart.cudaError_t.cudaSuccess:
        try:
            _, text = cudart.cudaGetErrorString(err)
            text = text.decode() if isinstance(text, bytes) else str(text)
        except Exception:  # naming the error is best effort; the code is still reported
            text = "unknown error"
        raise CudaError(f"{what} failed: {getattr(err, 'name', err)} ({text})")
    if not values:
        return None
    return values[0] if len(values) == 1 else values


def select_device(cudart: ModuleType, device: int) -> tuple[str, str]:
    """Make ``device`` current; return its (name, "major.minor" compute capability).

    Raises NoCudaDeviceError when no driver/device is present or ``device`` is out of range.
    """
    err, count = cudart.cudaGetDeviceCount()
    if err != cudart.cudaError_t.cudaSuccess or not count:
        raise NoCudaDeviceError(f"no CUDA device available ({getattr(err, 'name', err)}); .engine files need a GPU")
    if not 0 <= device < count:
        raise NoCudaDeviceError(f"CUDA device {device} does not exist (found {count})")
    check(cudart, cudart.cudaSetDevice(device), f"cudaSetDevice({device})")
    props = check(cudart, cudart.cudaGetDeviceProperties(device), "cudaGetDeviceProperties")
    name = props.name.decode(errors="replace") if isinstance(props.name, bytes) else str(props.name)
    return name.rstrip("\0").strip(), f"{props.major}.{props.minor}"


class PinnedArray:
    """Page-locked host memory exposed as a numpy array of ``shape`` and ``dtype`` (cudaHostAlloc)."""

    def __init__(self, cudart: ModuleType, shape: tuple[int, ...], dtype: np.dtype) -> None:
        self._cudart = cudart
        count = int(np.prod(shape))
        self.nbytes = max(1, count * np.dtype(dtype).itemsize)
        self.ptr = int(check(cudart, cudart.cudaHostAlloc(self.nbytes, cudart.cudaHostAllocDefault), "cudaHostAlloc"))
        raw = (ctypes.c_byte * self.nbytes).from_address(self.ptr)
        self.array: np.ndarray | None = np.frombuffer(raw, dtype=dtype, count=count).reshape(shape)

    def free(self) -> None:
        if self.ptr:
            self.array = None
            check(self._cudart, self._cudart.cudaFreeHost(self.ptr), "cudaFreeHost")
            self.ptr = 0


class DeviceBuffer:
    """``nbytes`` of device memory (cudaMalloc)."""

    def __init__(self, cudart: ModuleType, nbytes: int) -> None:
        self._cudart = cudart
        self.nbytes = max(1, int(nbytes))
        self.ptr = int(check(cudart, cudart.cudaMalloc(self.nbytes), "cudaMalloc"))

    def free(self) -> None:
        if self.ptr:
            check(self._cudart, self._cudart.cudaFree(self.ptr), "cudaFree")
            self.ptr = 0


class Stream:
    """One non-blocking CUDA stream with checked async copies, synchronization and graph capture."""

    def __init__(self, cudart: ModuleType) -> None:
        self._cudart = cudart
        self.handle = check(
            cudart, cudart.cudaStreamCreateWithFlags(cudart.cudaStreamNonBlocking), "cudaStreamCreateWithFlags"
        )

    @property
    def ptr(self) -> int:
        """The stream as the integer TensorRT's ``execute_async_v3`` takes."""
        return int(self.handle)

    def copy_to_device(self, dst: int, src: int, nbytes: int) -> None:
        kind = self._cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
        check(self._cudart, self._cudart.cudaMemcpyAsync(dst, src, nbytes, kind, self.handle), "cudaMemcpyAsync H2D")

    def copy_to_host(self, dst: int, src: int, nbytes: int) -> None:
        kind = self._cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        check(self._cudart, self._cudart.cudaMemcpyAsync(dst, src, nbytes, kind, self.handle), "cudaMemcpyAsync D2H")

    def synchronize(self) -> None:
        check(self._cudart, self._cudart.cudaStreamSynchronize(self.handle), "cudaStreamSynchronize")

    def begin_capture(self) -> None:
        mode = self._cudart.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal
        check(self._cudart, self._cudart.cudaStreamBeginCapture(self.handle, mode), "cudaStreamBeginCapture")

    def end_capture(self) -> Any:
        """End capture; return the executable graph (cudaGraphExec_t). The plain graph is freed here."""
        graph = check(self._cudart, self._cudart.cudaStreamEndCapture(self.handle), "cudaStreamEndCapture")
        try:
            return check(self._cudart, self._cudart.cudaGraphInstantiate(graph, 0), "cudaGraphInstantiate")
        finally:
            check(self._cudart, self._cudart.cudaGraphDestroy(graph), "cudaGraphDestroy")

    def abort_capture(self) -> None:
        """End a failed capture, discarding whatever was recorded; never raises."""
        err, graph = self._cudart.cudaStreamEndCapture(self.handle)
        if err == self._cudart.cudaError_t.cudaSuccess and graph:
            self._cudart.cudaGraphDestroy(graph)

    def launch(self, graph_exec: Any) -> None:
        check(self._cudart, self._cudart.cudaGraphLaunch(graph_exec, self.handle), "cudaGraphLaunch")

    def destroy_graph(self, graph_exec: Any) -> None:
        check(self._cudart, self._cudart.cudaGraphExecDestroy(graph_exec), "cudaGraphExecDestroy")

    def destroy(self) -> None:
        if self.handle is not None:
            check(self._cudart, self._cudart.cudaStreamDestroy(self.handle), "cudaStreamDestroy")
            self.handle = None


class EventTimer:
    """CUDA events recorded on a stream between the phases of a run: ``mark(0)`` .. ``mark(len(names))``,
    then, after the stream is synchronized, ``elapsed_s()`` gives {phase name: seconds} of GPU time."""

    def __init__(self, cudart: ModuleType, stream: Stream, names: tuple[str, ...]) -> None:
        self._cudart, self._stream, self.names = cudart, stream, names
        self._events: list[Any] = []
        for _ in range(len(names) + 1):
            self._events.append(check(cudart, cudart.cudaEventCreate(), "cudaEventCreate"))

    def mark(self, index: int) -> None:
        check(self._cudart, self._cudart.cudaEventRecord(self._events[index], self._stream.handle), "cudaEventRecord")

    def elapsed_s(self) -> dict[str, float]:
        out = {}
        for i, name in enumerate(self.names):
            ms = check(
                self._cudart,
                self._cudart.cudaEventElapsedTime(self._events[i], self._events[i + 1]),
                "cudaEventElapsedTime",
            )
            out[name] = float(ms) / 1e3
        return out

    def destroy(self) -> None:
        for event in self._events:
            self._cudart.cudaEventDestroy(event)
        self._events = []
