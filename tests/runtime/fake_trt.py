"""Stand-ins for ``tensorrt`` and cuda-python's cudart, so the TensorRT backend's logic runs without a GPU.

"Device" memory is host memory, copies are ``memmove``, a stream runs work at once (or records it
while capturing), and the fake engine computes a known function of its input at the tensor
addresses it was given. Enough to check buffer sizes, addresses, shape changes and graph replay.
"""

from __future__ import annotations

import ctypes
import enum
from types import SimpleNamespace

import numpy as np

H = W = 128
NUM_ANCHORS = 6
NUM_CLASSES = 2


def reference_outputs(batch: np.ndarray) -> dict[str, np.ndarray]:
    """What the fake engine computes for float32 [B, 3, H, W]: dense boxes [B, 6, 4], scores [B, 6, 2]."""
    b = batch.shape[0]
    v = batch[:, 0, 0, 0].astype(np.float32)  # one number per image
    base = np.array([[0, 0, 10, 10], [5, 5, 15, 15], [50, 50, 90, 90], [0, 64, 32, 96], [70, 0, 128, 40], [1, 1, 9, 9]])
    boxes = np.broadcast_to(base.astype(np.float32), (b, NUM_ANCHORS, 4)) + v[:, None, None]
    ramp = np.linspace(0.1, 0.9, NUM_ANCHORS * NUM_CLASSES, dtype=np.float32).reshape(NUM_ANCHORS, NUM_CLASSES)
    scores = np.clip(ramp[None] * (1 + v[:, None, None] / 100), 0, 0.99)
    return {"boxes": np.ascontiguousarray(boxes), "scores": scores.astype(np.float32)}


class FakeCudart:
    """The cudart calls the backend makes, each returning (err, *values) like cuda-python."""

    class cudaError_t(enum.IntEnum):  # noqa: N801 - cuda-python's names
        cudaSuccess = 0
        cudaErrorMemoryAllocation = 2

    class cudaMemcpyKind(enum.IntEnum):  # noqa: N801
        cudaMemcpyHostToDevice = 1
        cudaMemcpyDeviceToHost = 2

    class cudaStreamCaptureMode(enum.IntEnum):  # noqa: N801
        cudaStreamCaptureModeThreadLocal = 1

    cudaHostAllocDefault = 0
    cudaStreamNonBlocking = 1

    def __init__(self, device_count=1, fail_malloc=False):
        self.device_count = device_count
        self.fail_malloc = fail_malloc
        self.buffers: dict[int, ctypes.Array] = {}
        self.capturing: list | None = None
        self.graph_launches = 0
        self.freed = 0

    def _alloc(self, n):
        if self.fail_malloc:
            return (self.cudaError_t.cudaErrorMemoryAllocation, 0)
        buf = ctypes.create_string_buffer(n)
        self.buffers[ctypes.addressof(buf)] = buf
        return (self.cudaError_t.cudaSuccess, ctypes.addressof(buf))

    def _free(self, ptr):
        self.buffers.pop(ptr)
        self.freed += 1
        return (self.cudaError_t.cudaSuccess,)

    def cudaGetDeviceCount(self):  # noqa: N802
        return (self.cudaError_t.cudaSuccess, self.device_count)

    def cudaSetDevice(self, device):  # noqa: N802
        return (self.cudaError_t.cudaSuccess,)

    def cudaGetDeviceProperties(self, device):  # noqa: N802
        return (self.cudaError_t.cudaSuccess, SimpleNamespace(name=b"Fake GPU\0\0", major=8, minor=6))

    def cudaGetErrorString(self, err):  # noqa: N802
        return (self.cudaError_t.cudaSuccess, b"out of memory")

    def cudaHostAlloc(self, n, flags):  # noqa: N802
        return self._alloc(n)

    def cudaMalloc(self, n):  # noqa: N802
        return self._alloc(n)

    cudaFreeHost = _free
    cudaFree = _free

    def cudaStreamCreateWithFlags(self, flags):  # noqa: N802
        return (self.cudaError_t.cudaSuccess, 7)

    def cudaStreamDestroy(self, stream):  # noqa: N802
        return (self.cudaError_t.cudaSuccess,)

    def cudaStreamSynchronize(self, stream):  # noqa: N802
        return (self.cudaError_t.cudaSuccess,)

    def cudaMemcpyAsync(self, dst, src, n, kind, stream):  # noqa: N802
        ctypes.memmove(dst, src, n)
        return (self.cudaError_t.cudaSuccess,)

    def cudaStreamBeginCapture(self, stream, mode):  # noqa: N802
        self.capturing = []
        return (self.cudaError_t.cudaSuccess,)

    def cudaStreamEndCapture(self, stream):  # noqa: N802
        graph, self.capturing = self.capturing, None
        return (self.cudaError_t.cudaSuccess, graph)

    def cudaGraphInstantiate(self, graph, flags):  # noqa: N802
        return (self.cudaError_t.cudaSuccess, list(graph))

    def cudaGraphLaunch(self, graph_exec, stream):  # noqa: N802
        self.graph_launches += 1
        for work in graph_exec:
            work()
        return (self.cudaError_t.cudaSuccess,)

    def cudaGraphDestroy(self, graph):  # noqa: N802
        return (self.cudaError_t.cudaSuccess,)

    cudaGraphExecDestroy = cudaGraphDestroy


class FakeContext:
    def __init__(self, engine):
        self.engine = engine
        self.addresses: dict[str, int] = {}
        self.batch = None
        self.executions = 0

    def set_tensor_address(self, name, ptr):
        self.addresses[name] = ptr
        return True

    def set_input_shape(self, name, shape):
        lo, hi = self.engine.batch_range
        if not lo <= shape[0] <= hi:
            return False
        self.batch = shape[0]
        return True

    def execute_async_v3(self, stream):
        b = self.batch  # shapes are fixed at enqueue time, as in TensorRT

        def work():
            self.executions += 1
            inp = _view(self.addresses["images"], (b, 3, H, W), np.float32)
            for name, value in reference_outputs(inp).items():
                _view(self.addresses[name], value.shape, np.float32)[...] = value

        if self.engine.cudart.capturing is not None:
            if self.engine.capture_fails:
                return False
            self.engine.cudart.capturing.append(work)
        else:
            work()
        return True


def _view(ptr, shape, dtype):
    n = int(np.prod(shape)) * np.dtype(dtype).itemsize
    return np.frombuffer((ctypes.c_byte * n).from_address(ptr), dtype=dtype).reshape(shape)


class FakeEngine:
    def __init__(self, cudart, batch_range=(1, 4), input_shape=(-1, 3, H, W), capture_fails=False):
        self.cudart = cudart
        self.capture_fails = capture_fails
        self.contexts = 0
        self.batch_range = batch_range
        lo, hi = batch_range
        self.tensors = {
            "images": ("in", input_shape, ((lo, 3, H, W), (lo, 3, H, W), (hi, 3, H, W))),
            "boxes": ("out", (-1, NUM_ANCHORS, 4), None),
            "scores": ("out", (-1, NUM_ANCHORS, NUM_CLASSES), None),
        }
        self.num_io_tensors = len(self.tensors)

    def get_tensor_name(self, i):
        return list(self.tensors)[i]

    def get_tensor_mode(self, name):
        return FakeTrt.TensorIOMode.INPUT if self.tensors[name][0] == "in" else FakeTrt.TensorIOMode.OUTPUT

    def get_tensor_shape(self, name):
        return self.tensors[name][1]

    def get_tensor_dtype(self, name):
        return "float32"

    def get_tensor_profile_shape(self, name, profile):
        return self.tensors[name][2]

    def create_execution_context(self, *args):
        self.contexts += 1
        return FakeContext(self)


class FakeTrt:
    """The slice of the ``tensorrt`` module the backend touches."""

    __version__ = "1.7.1.116"

    class TensorIOMode(enum.IntEnum):
        INPUT = 1
        OUTPUT = 2

    class ILogger:
        class Severity(enum.IntEnum):
            INTERNAL_ERROR = 0
            ERROR = 1
            WARNING = 2

        def __init__(self):
            pass

    engine: FakeEngine | None = None

    @staticmethod
    def nptype(dtype):
        return np.float32

    class Runtime:
        def __init__(self, logger):
            self.logger = logger

        def deserialize_cuda_engine(self, data):
            return FakeTrt.engine
