"""Stand-ins for ``tensorrt`` and cuda-python's cudart, so the TensorRT backend's logic runs without a GPU.

"Device" memory is host memory and the fake engine computes a known function of its input at the tensor
addresses it was given. Each behaviour our code relies on is as strict as the CUDA / TensorRT docs say:

- the current device is per host thread (device 0 until ``cudaSetDevice`` on that thread); a stream
  belongs to the device current when it was made, and a kernel launch (``execute_async_v3``, a graph
  launch) on a stream of another device fails, while copies work from any device;
- ``cudaMemcpyAsync`` and kernels are queued on their stream and run at ``cudaStreamSynchronize``: a
  pinned host buffer read before it is stale;
- while a stream captures, work is recorded, not run; synchronizing it invalidates the capture, and an
  engine with data-dependent shapes (``data_dependent=True``: the output size is known only after a
  device-to-host read inside enqueue) breaks every capture that way;
- ``set_tensor_address`` returns False for a name that is not an I/O tensor of the engine;
- an engine with a plugin layer deserializes only after ``init_libnvinfer_plugins``;
- outputs have the engine's types: ``outputs="nms"`` gives ``num_dets``/``classes`` int32;
- ``ComputeCapability`` lists the compute capabilities TensorRT-RTX 1.7 runs on (7.5 ... 12.1);
- TensorRT-RTX compiles a kernel the first time a context runs a shape, unless the runtime cache attached
  to the context's runtime config has it; ``IRuntimeCache.deserialize`` returns False (and loads
  nothing) for a blob made on another GPU or that is not a cache.
"""

from __future__ import annotations

import ctypes
import enum
import threading
from types import SimpleNamespace

import numpy as np

H = W = 128
NUM_ANCHORS = 6
NUM_CLASSES = 2
MAX_DETS = 3
BASE_BOXES = [[0, 0, 10, 10], [5, 5, 15, 15], [50, 50, 90, 90], [0, 64, 32, 96], [70, 0, 128, 40], [1, 1, 9, 9]]


def reference_outputs(batch: np.ndarray, outputs: str = "dense") -> dict[str, np.ndarray]:
    """What the fake engine computes for float32 [B, 3, H, W].

    dense: boxes [B, 6, 4] float32, scores [B, 6, 2] float32. nms: num_dets [B, 1] int32,
    boxes [B, 3, 4] float32, scores [B, 3] float32, classes [B, 3] int32.
    """
    b = batch.shape[0]
    v = batch[:, 0, 0, 0].astype(np.float32)  # one number per image
    boxes = np.broadcast_to(np.float32(BASE_BOXES), (b, NUM_ANCHORS, 4)) + v[:, None, None]
    ramp = np.linspace(0.1, 0.9, NUM_ANCHORS * NUM_CLASSES, dtype=np.float32).reshape(NUM_ANCHORS, NUM_CLASSES)
    scores = np.clip(ramp[None] * (1 + v[:, None, None] / 100), 0, 0.99).astype(np.float32)
    if outputs == "dense":
        return {"boxes": np.ascontiguousarray(boxes), "scores": scores}
    count = (np.abs(v) * 10).astype(np.int32) % (MAX_DETS + 1)
    return {
        "num_dets": count[:, None],
        "boxes": np.ascontiguousarray(boxes[:, :MAX_DETS]),
        "scores": np.ascontiguousarray(scores[:, :MAX_DETS, 0]),
        "classes": np.broadcast_to(np.arange(MAX_DETS, dtype=np.int32) % NUM_CLASSES, (b, MAX_DETS)).copy(),
    }


class FakeCudart:
    """The cudart calls the backend makes, each returning (err, *values) like cuda-python."""

    class cudaError_t(enum.IntEnum):  # noqa: N801 - cuda-python's names
        cudaSuccess = 0
        cudaErrorMemoryAllocation = 2
        cudaErrorInvalidDevice = 101
        cudaErrorInvalidResourceHandle = 400
        cudaErrorStreamCaptureUnsupported = 900
        cudaErrorStreamCaptureInvalidated = 901

    class cudaMemcpyKind(enum.IntEnum):  # noqa: N801
        cudaMemcpyHostToDevice = 1
        cudaMemcpyDeviceToHost = 2

    class cudaStreamCaptureMode(enum.IntEnum):  # noqa: N801
        cudaStreamCaptureModeThreadLocal = 1

    cudaHostAllocDefault = 0
    cudaStreamNonBlocking = 1

    def __init__(self, device_count=1, fail_malloc=False, capability=(8, 6)):
        self.device_count = device_count
        self.fail_malloc = fail_malloc
        self.capability = capability
        self.buffers: dict[int, ctypes.Array] = {}
        self.capturing: list | None = None
        self.capture_invalidated = False
        self.graph_launches = 0
        self.freed = 0
        self._thread = threading.local()
        self._streams: dict[int, dict] = {}  # handle -> {"device": int, "queue": [work]}

    def current_device(self) -> int:
        return getattr(self._thread, "device", 0)

    def _ok(self, *values):
        return (self.cudaError_t.cudaSuccess, *values)

    def _alloc(self, n):
        if self.fail_malloc:
            return (self.cudaError_t.cudaErrorMemoryAllocation, 0)
        buf = ctypes.create_string_buffer(n)
        self.buffers[ctypes.addressof(buf)] = buf
        return self._ok(ctypes.addressof(buf))

    def _free(self, ptr):
        self.buffers.pop(ptr)
        self.freed += 1
        return self._ok()

    def enqueue(self, stream, work, *, kernel: bool):
        """Queue ``work`` on ``stream`` (record it while capturing); a kernel needs the stream's device current."""
        if kernel and self._streams[int(stream)]["device"] != self.current_device():
            return False
        if self.capturing is not None:
            self.capturing.append(work)
        else:
            self._streams[int(stream)]["queue"].append(work)
        return True

    def cudaGetDeviceCount(self):  # noqa: N802
        return self._ok(self.device_count)

    def cudaSetDevice(self, device):  # noqa: N802
        if not 0 <= device < self.device_count:
            return (self.cudaError_t.cudaErrorInvalidDevice,)
        self._thread.device = device
        return self._ok()

    def cudaGetDeviceProperties(self, device):  # noqa: N802
        major, minor = self.capability
        return self._ok(SimpleNamespace(name=b"Fake GPU\0\0", major=major, minor=minor))

    def cudaGetErrorString(self, err):  # noqa: N802
        return self._ok(b"out of memory")

    def cudaHostAlloc(self, n, flags):  # noqa: N802
        return self._alloc(n)

    def cudaMalloc(self, n):  # noqa: N802
        return self._alloc(n)

    cudaFreeHost = _free
    cudaFree = _free

    def cudaStreamCreateWithFlags(self, flags):  # noqa: N802
        handle = 7 + len(self._streams)
        self._streams[handle] = {"device": self.current_device(), "queue": []}
        return self._ok(handle)

    def cudaStreamDestroy(self, stream):  # noqa: N802
        self._streams.pop(int(stream))
        return self._ok()

    def cudaStreamSynchronize(self, stream):  # noqa: N802
        if self.capturing is not None:  # not allowed while capturing: the capture is invalidated
            self.capture_invalidated = True
            return (self.cudaError_t.cudaErrorStreamCaptureUnsupported,)
        queue = self._streams[int(stream)]["queue"]
        while queue:
            queue.pop(0)()
        return self._ok()

    def cudaMemcpyAsync(self, dst, src, n, kind, stream):  # noqa: N802
        self.enqueue(stream, lambda: ctypes.memmove(dst, src, n), kernel=False)
        return self._ok()

    def cudaStreamBeginCapture(self, stream, mode):  # noqa: N802
        self.capturing, self.capture_invalidated = [], False
        return self._ok()

    def cudaStreamEndCapture(self, stream):  # noqa: N802
        graph, self.capturing = self.capturing, None
        if self.capture_invalidated:
            return (self.cudaError_t.cudaErrorStreamCaptureInvalidated, None)
        return self._ok(graph)

    def cudaGraphInstantiate(self, graph, flags):  # noqa: N802
        return self._ok(list(graph))

    def cudaGraphLaunch(self, graph_exec, stream):  # noqa: N802
        def replay():
            self.graph_launches += 1
            for work in graph_exec:
                work()

        ok = self.enqueue(stream, replay, kernel=True)
        return self._ok() if ok else (self.cudaError_t.cudaErrorInvalidResourceHandle,)

    def cudaGraphDestroy(self, graph):  # noqa: N802
        return self._ok()

    cudaGraphExecDestroy = cudaGraphDestroy


class FakeRuntimeCache:
    def __init__(self, cudart):
        self.header = f"FAKE-RTX-RUNTIME-CACHE sm{cudart.capability[0]}{cudart.capability[1]}\n".encode()
        self.kernels: set[str] = set()

    def deserialize(self, blob):
        blob = bytes(blob)
        if not blob.startswith(self.header):
            return False
        self.kernels = set(blob[len(self.header) :].decode().split())
        return True

    def serialize(self):
        return self.header + " ".join(sorted(self.kernels)).encode()


class FakeRuntimeConfig:
    def __init__(self, cudart):
        self.cudart, self.runtime_cache, self.cuda_graph_strategy = cudart, None, None

    def create_runtime_cache(self):
        return FakeRuntimeCache(self.cudart)

    def set_runtime_cache(self, cache):
        self.runtime_cache = cache
        return True


class FakeContext:
    def __init__(self, engine, config=None):
        self.engine = engine
        self.cache = config.runtime_cache if config is not None else None
        self.addresses: dict[str, int] = {}
        self.batch = None
        self.executions = 0

    def set_tensor_address(self, name, ptr):
        if name not in self.engine.tensors:  # TensorRT: false for a name that is not an I/O tensor
            return False
        self.addresses[name] = ptr
        return True

    def set_input_shape(self, name, shape):
        lo, hi = self.engine.batch_range
        if name not in self.engine.tensors or not lo <= shape[0] <= hi:
            return False
        self.batch = shape[0]
        return True

    def execute_async_v3(self, stream):
        b, engine = self.batch, self.engine  # shapes are fixed at enqueue time, as in TensorRT
        cudart = engine.cudart
        if set(self.addresses) != set(engine.tensors):
            return False  # every I/O tensor needs an address before enqueue

        def work():
            self.executions += 1
            kernel = f"batch{b}"  # TensorRT-RTX: shape-specialized kernels, compiled on first use
            if self.cache is None or kernel not in self.cache.kernels:
                engine.compilations += 1
                if self.cache is not None:
                    self.cache.kernels.add(kernel)
            inp = _view(self.addresses["images"], (b, 3, H, W), np.float32)
            for name, value in reference_outputs(inp, engine.outputs).items():
                _view(self.addresses[name], value.shape, value.dtype)[...] = value

        if cudart.capturing is not None and engine.data_dependent:
            # the output size is read back inside enqueue: a synchronization, which breaks the capture
            cudart.cudaStreamSynchronize(stream)
            return False
        return cudart.enqueue(stream, work, kernel=True)


def _view(ptr, shape, dtype):
    n = int(np.prod(shape)) * np.dtype(dtype).itemsize
    return np.frombuffer((ctypes.c_byte * n).from_address(ptr), dtype=dtype).reshape(shape)


class FakeEngine:
    def __init__(
        self,
        cudart,
        batch_range=(1, 4),
        input_shape=(-1, 3, H, W),
        data_dependent=False,
        outputs="dense",
        plugin=False,
    ):
        self.cudart = cudart
        self.data_dependent, self.outputs, self.plugin = data_dependent, outputs, plugin
        self.contexts = self.compilations = 0
        self.batch_range = batch_range
        lo, hi = batch_range
        self.tensors = {"images": ("in", input_shape, ((lo, 3, H, W), (lo, 3, H, W), (hi, 3, H, W)), "FLOAT")}
        example = reference_outputs(np.zeros((1, 3, H, W), np.float32), outputs)
        for name, value in example.items():
            self.tensors[name] = ("out", (-1, *value.shape[1:]), None, "INT32" if value.dtype == np.int32 else "FLOAT")
        self.num_io_tensors = len(self.tensors)

    def get_tensor_name(self, i):
        return list(self.tensors)[i]

    def get_tensor_mode(self, name):
        return FakeTrt.TensorIOMode.INPUT if self.tensors[name][0] == "in" else FakeTrt.TensorIOMode.OUTPUT

    def get_tensor_shape(self, name):
        return self.tensors[name][1]

    def get_tensor_dtype(self, name):
        return FakeTrt.DataType[self.tensors[name][3]]

    def get_tensor_profile_shape(self, name, profile):
        return self.tensors[name][2]

    def create_runtime_config(self):
        return FakeRuntimeConfig(self.cudart)

    def create_execution_context(self, config=None):
        self.contexts += 1
        return FakeContext(self, config)


class FakeTrt:
    """The slice of the ``tensorrt`` module the backend touches (its version is TensorRT-RTX 1.7's)."""

    __version__ = "1.7.1.116"

    class TensorIOMode(enum.IntEnum):
        INPUT = 1
        OUTPUT = 2

    class DataType(enum.IntEnum):
        FLOAT = 0
        INT32 = 3

    ComputeCapability = enum.IntEnum(
        "ComputeCapability", ["NONE", "CURRENT", "SM75", "SM80", "SM86", "SM89", "SM120", "SM121"]
    )

    class ILogger:
        class Severity(enum.IntEnum):
            INTERNAL_ERROR = 0
            ERROR = 1
            WARNING = 2

        def __init__(self):
            pass

    engine: FakeEngine | None = None
    plugins_initialised = False  # TensorRT's plugin registry is process-global; tests reset it

    @staticmethod
    def init_libnvinfer_plugins(logger, namespace):
        FakeTrt.plugins_initialised = True
        return True

    @staticmethod
    def nptype(dtype):
        return {FakeTrt.DataType.FLOAT: np.float32, FakeTrt.DataType.INT32: np.int32}[dtype]

    class Runtime:
        def __init__(self, logger):
            self.logger = logger

        def deserialize_cuda_engine(self, data):
            if FakeTrt.engine.plugin and not FakeTrt.plugins_initialised:
                self.logger.log(FakeTrt.ILogger.Severity.ERROR, "getPluginCreator could not find EfficientNMS_TRT")
                return None
            return FakeTrt.engine
