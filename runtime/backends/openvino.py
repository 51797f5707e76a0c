"""OpenVINO backend: exported ONNX files on the CPU through OpenVINO Runtime (torch-free; openvino imported lazily).

OpenVINO reads our files as they are: NonMaxSuppression in the graph, the FP16 casts and both INT8
Q/DQ forms. It compiles them for the CPU with the LATENCY hint, one stream whose threads
(``num_threads``, else OpenVINO's choice) all work on one batch: that is how the ``Detector`` and
the ``BatchingDetector``'s single worker call a backend (THROUGHPUT's parallel streams only help
callers that keep several requests in flight; docs/ARCHITECTURE.md has the measurement).

``--nms efficient`` files hold the ``EfficientNMS_TRT`` TensorRT plugin, which OpenVINO cannot run:
the graph is cut in memory at the plugin's inputs and its CPU reference (``host_nms.efficient_nms``,
the one ONNX Runtime runs too) finishes on the host, so every NMS variant gives the same outputs.

Each file is parsed with the ``onnx`` package before OpenVINO sees it: a file that points at external
data is refused (OpenVINO would read it, relative to the working directory). Needs
``pip install 'retina-deploy[openvino]'`` (openvino, onnx).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from retina_deploy.core.argcheck import int_at_least
from retina_deploy.core.errors import ConfigError, ModelFileError
from retina_deploy.runtime.backends.ort_efficient_nms import PLUGIN_OP, run_reference
from retina_deploy.runtime.contract.onnx_metadata import INPUT_NAME, OnnxMetadata
from retina_deploy.runtime.contract.spec import check_images, run_in_chunks

INSTALL_HINT = "pip install 'retina-deploy[openvino]'"


def openvino_installed() -> bool:
    """Whether ``openvino`` and ``onnx`` import (without importing them)."""
    import importlib.util

    return all(importlib.util.find_spec(name) is not None for name in ("openvino", "onnx"))


@functools.cache
def _core():
    """The process's one ``openvino.Core``; ConfigError with the install line if openvino is absent."""
    try:
        import openvino
    except ImportError as e:
        raise ConfigError(f"backend 'openvino' needs the openvino package ({e}); {INSTALL_HINT}") from e
    return openvino.Core()


class OpenVinoBackend:
    """An exported ONNX file compiled by OpenVINO for the CPU, behind the Backend protocol.

    Attributes: name "openvino-cpu"; input_size (H, W); batch_range (min, max); metadata, the
    file's ``OnnxMetadata``; path; compiled, the ``openvino.CompiledModel``.
    """

    name = "openvino-cpu"

    def __init__(
        self, compile_model: Callable[[], Any], metadata: OnnxMetadata, path: Path, plugin_attrs: dict[str, Any] | None
    ) -> None:
        self.metadata = metadata
        self.path = path
        self.input_size: tuple[int, int] = tuple(metadata.input_size)
        self._compile_model = compile_model
        self._start()
        batch_dim = self.compiled.input(0).get_partial_shape()[0]
        # As ONNX Runtime: a fixed batch axis runs only that batch, a dynamic one 1..the file's MAX.
        fixed = batch_dim.get_length() if batch_dim.is_static else None
        self.batch_range: tuple[int, int] = (fixed, fixed) if fixed else (1, metadata.batch[2])
        self._plugin_attrs = plugin_attrs

    def _start(self) -> None:
        """A freshly compiled model and its one infer request."""
        self.compiled = self._compile_model()
        self._outputs = list(self.compiled.outputs)
        self._request = self.compiled.create_infer_request()

    @classmethod
    def load(cls, path: str | Path, *, num_threads: int | None = None) -> OpenVinoBackend:
        """Read, check and compile ``path`` (a retina-deploy ``.onnx`` file) for the CPU.

        Raises ModelFileError (missing, truncated, foreign or external-data file, outputs that do not
        match the metadata) and ConfigError (openvino or onnx not installed, bad ``num_threads``).
        """
        path = Path(path)
        if num_threads is not None:
            num_threads = int_at_least("num_threads", num_threads, 1)
        core = _core()
        proto = _parse(path)
        metadata = OnnxMetadata.from_props({p.key: p.value for p in proto.metadata_props}, str(path))
        plugin_attrs = None
        if any(n.op_type == PLUGIN_OP for n in proto.graph.node):
            plugin_attrs = _cut_at_plugin(proto, metadata, path)
        try:
            model = core.read_model(proto.SerializeToString())
        except RuntimeError as e:
            reason = _reason(e)
            raise ModelFileError(f"{path}: not a loadable ONNX file, truncated or of another format ({reason})") from e
        names = metadata.output_names if plugin_attrs is None else [o.name for o in proto.graph.output]
        _check_signature(model, metadata, names, path)
        # FP32 kernels as ONNX Runtime's (OpenVINO would pick bf16 on CPUs with AMX): the same detections everywhere
        config = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32"}
        if num_threads is not None:
            config["INFERENCE_NUM_THREADS"] = num_threads

        def compile_model():
            try:
                return core.compile_model(model, "CPU", config)
            except RuntimeError as e:
                raise ModelFileError(f"{path}: OpenVINO cannot compile it for the CPU ({_reason(e)})") from e

        return cls(compile_model, metadata, path, plugin_attrs)

    def run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """float32 [B, 3, H, W] -> the file's outputs (see ``export_onnx``), any B >= 1 (chunks of MAX)."""
        if self._request is None:
            raise RuntimeError(f"the {self.name} backend is closed")
        check_images(batch, self.input_size)
        return run_in_chunks(self._run_chunk, batch, self.batch_range[1], self.metadata.output_names)

    def _run_chunk(self, chunk: np.ndarray) -> list[np.ndarray]:
        try:
            result = self._request.infer({INPUT_NAME: np.ascontiguousarray(chunk)}, share_inputs=True)
        except RuntimeError as e:
            # Seen with OpenVINO 2026.4 on an --int8-form cpu --nms none file at batch 2; the compiled model then
            # failed every later call, batch 1 included: a fresh one serves the next call.
            self._start()
            raise ModelFileError(
                f"{self.path}: OpenVINO could not run it at batch {chunk.shape[0]} ({_reason(e)}); "
                "try --backend ort-cpu"
            ) from e
        arrays = [result[o] for o in self._outputs]  # copies: the request's buffers are reused
        shapes = [list(a.shape) for a in arrays]
        if any(not s or s[0] != chunk.shape[0] for s in shapes):
            # Seen with OpenVINO 2026.4 on an --int8-form cpu --nms none file: boxes [N, N, 4] for [1, N, 4].
            raise ModelFileError(
                f"{self.path}: OpenVINO returned outputs of shapes {shapes} for a batch of {chunk.shape[0]} "
                "(it mis-converted the graph); try --backend ort-cpu"
            )
        return arrays if self._plugin_attrs is None else list(run_reference(*arrays, self._plugin_attrs))

    def close(self) -> None:
        self._request = self.compiled = None


def _parse(path: Path):
    """The file as an ``onnx.ModelProto``; ModelFileError if missing, unparseable or pointing at external data."""
    try:
        import onnx
        from google.protobuf.message import DecodeError
    except ImportError as e:
        raise ConfigError(f"backend 'openvino' needs the onnx package ({e}); {INSTALL_HINT}") from e
    if not path.is_file():
        raise ModelFileError(f"{path}: no such ONNX file")
    try:
        proto = onnx.load_from_string(path.read_bytes())
    except DecodeError as e:
        raise ModelFileError(f"{path}: not a loadable ONNX file, truncated or of another format ({e})") from e
    external = [name for name, tensor in _tensors(proto.graph) if onnx.external_data_helper.uses_external_data(tensor)]
    if external:
        raise ModelFileError(f"{path}: tensor {external[0]!r} points at external data, which is never loaded")
    return proto


def _tensors(graph) -> Iterator[tuple[str, Any]]:
    """(name, TensorProto) of every initializer and attribute tensor of ``graph`` and its subgraphs."""
    for t in graph.initializer:
        yield t.name, t
    for sparse in graph.sparse_initializer:
        yield sparse.values.name, sparse.values
        yield sparse.indices.name, sparse.indices
    for node in graph.node:
        for a in node.attribute:
            for t in ([a.t] if a.HasField("t") else []) + list(a.tensors):
                yield f"{node.name}.{a.name}", t
            for g in ([a.g] if a.HasField("g") else []) + list(a.graphs):
                yield from _tensors(g)


def _cut_at_plugin(proto, metadata: OnnxMetadata, path: Path) -> dict[str, Any]:
    """Drop the one EfficientNMS_TRT node, whose outputs must be the graph's detection outputs, from ``proto``
    (in place): the graph then ends at the plugin's inputs, boxes [B, N, 4] and scores [B, N, C].
    Returns the node's attributes, for ``run_reference`` on the host."""
    from onnx import TensorProto, helper

    plugins = [n for n in proto.graph.node if n.op_type == PLUGIN_OP]
    graph_outputs = [o.name for o in proto.graph.output]
    node = plugins[0]
    if len(plugins) != 1 or list(node.output) != graph_outputs or tuple(graph_outputs) != metadata.output_names:
        raise ModelFileError(
            f"{path}: expected one {PLUGIN_OP} node producing the outputs {list(metadata.output_names)}; "
            f"found {len(plugins)} node(s) and outputs {graph_outputs}"
        )
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    proto.graph.node.remove(node)
    del proto.graph.output[:]
    proto.graph.output.extend(helper.make_tensor_value_info(name, TensorProto.FLOAT, None) for name in node.input)
    kept = [o for o in proto.opset_import if o.domain != node.domain]
    del proto.opset_import[:]
    proto.opset_import.extend(kept)
    return attrs


def _check_signature(model, metadata: OnnxMetadata, output_names: Sequence[str], path: Path) -> None:
    """ModelFileError unless the model's one input is images [B, 3, H, W] and its outputs are ``output_names``."""
    h, w = metadata.input_size
    inputs = model.inputs
    dims = [d.get_length() if d.is_static else None for d in inputs[0].get_partial_shape()] if inputs else []
    if len(inputs) != 1 or INPUT_NAME not in inputs[0].get_names() or dims[1:] != [3, h, w]:
        got = [(sorted(i.get_names()), str(i.get_partial_shape())) for i in inputs]
        raise ModelFileError(f"{path}: inputs {got} do not match the metadata's images [B, 3, {h}, {w}]")
    got = [sorted(o.get_names()) for o in model.outputs]
    if len(got) != len(output_names) or any(name not in names for name, names in zip(output_names, got, strict=True)):
        raise ModelFileError(f"{path}: outputs {got} do not match the expected {list(output_names)}")


def _reason(error: Exception) -> str:
    """The last non-empty line of OpenVINO's multi-line message (where it says what failed)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[-1] if lines else type(error).__name__
