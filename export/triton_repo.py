"""``triton-repo``: a Triton Inference Server model repository for our ONNX file or TensorRT engine.

Layout written (the model folder is built beside its final place and renamed into it)::

    OUT_DIR/NAME/config.pbtxt     platform, max_batch_size, inputs and outputs, dynamic batching,
                                  instance groups, the model's metadata as parameters
    OUT_DIR/NAME/1/model.onnx     (onnxruntime_onnx) or 1/model.plan (tensorrt_plan)
    OUT_DIR/NAME/README.md        the tritonserver command line and a client snippet

Inputs and outputs (names, dims after the batch axis, data types) are read from the ONNX graph, or
for an engine from its manifest (the engine was built from such a graph: same names and dims). The
parameters are the keys ``runtime.backends.triton`` reads to rebuild the ``ModelSpec``, so
``Detector.load("triton://host:8000/NAME")`` needs nothing but the URL.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from retina_deploy import __version__
from retina_deploy.core.errors import ConfigError, ModelFileError
from retina_deploy.core.fileio import replace_dir, sha256_file, temporary_sibling_dir
from retina_deploy.core.outputs import check_output_dir, mark_folder
from retina_deploy.runtime.backends.triton import spec_parameters
from retina_deploy.runtime.contract.manifest import read_verified_engine
from retina_deploy.runtime.contract.onnx_metadata import DENSE_OUTPUTS, DETECTION_OUTPUTS, INPUT_NAME

# ONNX TensorProto element types -> Triton data types (the ones our graphs use at their boundary).
_ONNX_TO_TRITON = {1: "TYPE_FP32", 10: "TYPE_FP16", 6: "TYPE_INT32", 7: "TYPE_INT64", 2: "TYPE_UINT8", 9: "TYPE_BOOL"}
_NAME_OK = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-.")
MAX_QUEUE_DELAY_US = 60_000_000  # a minute: past every client's timeout (Triton's field is a uint64)
COMMAND = "triton-repo"  # the marker in each model folder written, the only kind --overwrite replaces


@dataclass(frozen=True)
class TritonRepoConfig:
    """name: the model's name (folder, URL). max_batch: Triton's max_batch_size (None: the model's max).
    instances: instances per GPU (or on the CPU). kind: "gpu" or "cpu". queue_delay_us: longest time
    Triton holds a request to fill a batch (at most a minute). overwrite: replace a model folder that
    ``triton-repo`` wrote (never another folder)."""

    name: str = "retinanet"
    max_batch: int | None = None
    instances: int = 1
    kind: str = "gpu"
    queue_delay_us: int = 500
    overwrite: bool = False

    def __post_init__(self) -> None:
        if not self.name or not set(self.name) <= _NAME_OK or self.name.startswith("."):
            raise ConfigError(f"model name must be letters, digits, '_', '-' or '.', got {self.name!r}")
        for field, low in (("max_batch", 1), ("instances", 1), ("queue_delay_us", 0)):
            value = getattr(self, field)
            if value is None and field == "max_batch":
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ConfigError(f"{field} must be an integer >= {low}, got {value!r}")
        if self.queue_delay_us > MAX_QUEUE_DELAY_US:
            raise ConfigError(f"queue_delay_us must be <= {MAX_QUEUE_DELAY_US} (a minute), got {self.queue_delay_us}")
        if self.kind not in ("gpu", "cpu"):
            raise ConfigError(f"kind must be 'gpu' or 'cpu', got {self.kind!r}")


@dataclass(frozen=True)
class Tensor:
    """One model input or output as Triton sees it: dims exclude the batch axis."""

    name: str
    data_type: str
    dims: tuple[int, ...]


@dataclass(frozen=True)
class TritonRepoResult:
    model_dir: Path
    config_path: Path
    platform: str
    max_batch: int
    command: str


def write_triton_repo(model: Path, out_dir: Path, cfg: TritonRepoConfig | None = None) -> TritonRepoResult:
    """Write ``out_dir/<name>/`` for ``model`` (.onnx or .engine/.plan); see the module docstring.

    Raises ModelFileError (missing, foreign or tampered file; an ONNX file with a TensorRT plugin
    node; a TensorRT-RTX engine) and ConfigError (max_batch above the model's; the model folder
    exists and is not one ``triton-repo`` wrote, or is and ``overwrite`` is off; ``out_dir`` a file or
    unwritable), all before anything is written. Files and folders get the umask's usual modes.
    """
    cfg = cfg or TritonRepoConfig()
    model = Path(model)
    if not model.is_file():
        raise ModelFileError(f"{model}: no such model file")
    final = Path(out_dir) / cfg.name
    check_output_dir(out_dir, flag="OUT_DIR", foreign_ok=True)  # the repository: other models, the input too
    check_output_dir(final, inputs=(model,), flag="the model folder", command=COMMAND, overwrite=cfg.overwrite)
    if model.suffix == ".onnx":
        source = _onnx_source(model)
    elif model.suffix in (".engine", ".plan"):
        source = _engine_source(model)
        if cfg.kind != "gpu":
            raise ConfigError("a TensorRT engine runs on a GPU: --kind cpu is only for ONNX files")
    else:
        raise ModelFileError(f"{model}: not a model file (expected .onnx or .engine)")
    model_max = source["batch"][2]
    max_batch = model_max if cfg.max_batch is None else cfg.max_batch
    if max_batch > model_max:
        raise ConfigError(f"max_batch {max_batch} exceeds the model's maximum batch {model_max}")
    text = config_pbtxt(cfg, source, max_batch)
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    staging = temporary_sibling_dir(final)  # mode 0777 less the umask, as any folder (mkdtemp's is 0700)
    try:
        mark_folder(staging, COMMAND)
        (staging / "1").mkdir()
        (staging / "1" / source["file_name"]).write_bytes(source["data"])
        (staging / "config.pbtxt").write_text(text, encoding="utf-8")
        repo = Path(out_dir).resolve()
        command = f"tritonserver --model-repository={repo}"
        (staging / "README.md").write_text(_readme(cfg, source, max_batch, repo), encoding="utf-8")
        replace_dir(staging, final)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return TritonRepoResult(final, final / "config.pbtxt", source["platform"], max_batch, command)


# ---------------------------------------------------------------------------------------------- sources


def _onnx_source(path: Path) -> dict[str, Any]:
    """Platform, tensors, metadata and bytes of an exported ONNX file (read with the onnx package)."""
    import onnx

    from retina_deploy.runtime.contract.onnx_metadata import OnnxMetadata

    data = path.read_bytes()
    try:
        proto = onnx.load_from_string(data)
    except Exception as e:  # noqa: BLE001 - onnx raises several unrelated types for a bad file
        raise ModelFileError(f"{path}: not a loadable ONNX file ({type(e).__name__}: {e})") from e
    props = {p.key: p.value for p in proto.metadata_props}
    meta = OnnxMetadata.from_props(props, str(path))
    plugins = sorted({n.op_type for n in proto.graph.node if n.domain == "TRT"})
    if plugins:
        raise ModelFileError(
            f"{path}: its {', '.join(plugins)} node is a TensorRT plugin, which Triton's ONNX Runtime backend cannot"
            " run; build an engine from it (`retina-deploy build-engine`) and write the repository for the engine,"
            " or export with --nms onnx"
        )
    inputs = [_onnx_tensor(v, path) for v in proto.graph.input]
    outputs = [_onnx_tensor(v, path) for v in proto.graph.output]
    params = spec_parameters(
        class_names=meta.class_names,
        preprocess=meta.preprocess.to_dict(),
        nms=meta.nms.to_dict(),
        anchors_per_level=meta.anchors_per_level,
        precision=meta.precision,
        source_sha256=sha256_file(path),
    )
    params.update(checkpoint_sha256=meta.checkpoint_sha256, backbone=meta.backbone, toolkit_version=__version__)
    return {
        "platform": "onnxruntime_onnx",
        "file_name": "model.onnx",
        "data": data,
        "inputs": inputs,
        "outputs": outputs,
        "batch": meta.batch,
        "parameters": params,
        "note": "",
    }


def _onnx_tensor(value, path: Path) -> Tensor:
    t = value.type.tensor_type
    dims = [d.dim_value if d.HasField("dim_value") else -1 for d in t.shape.dim]
    if not dims or dims[0] != -1:
        raise ModelFileError(f"{path}: {value.name} has no dynamic batch axis (shape {dims}); Triton batches on it")
    if t.elem_type not in _ONNX_TO_TRITON:
        raise ModelFileError(f"{path}: {value.name} has ONNX element type {t.elem_type}, which Triton cannot take")
    return Tensor(value.name, _ONNX_TO_TRITON[t.elem_type], tuple(dims[1:]))


def _engine_source(path: Path) -> dict[str, Any]:
    """Platform, tensors, metadata and bytes of a verified engine (tensors from its manifest)."""
    manifest, data = read_verified_engine(path)
    if manifest.flavour != "tensorrt":
        raise ModelFileError(
            f"{path}: a {manifest.flavour} engine; Triton's tensorrt_plan backend runs engines built by TensorRT,"
            " so build one with TensorRT, or give triton-repo the ONNX file"
        )
    lo, _, hi = manifest.batch_range
    if lo != 1:
        raise ModelFileError(
            f"{path}: its profile starts at batch {lo}; Triton sends any batch from 1, rebuild with --batch 1 OPT {hi}"
        )
    post = manifest.postprocess
    nms, anchors = post["nms"], tuple(int(n) for n in post["anchors_per_level"])
    h, w = manifest.input_size
    if nms["mode"] == "none":
        n, c = sum(anchors), len(manifest.class_names)
        dims = {"boxes": ("TYPE_FP32", (n, 4)), "scores": ("TYPE_FP32", (n, c))}
        outputs = [Tensor(name, *dims[name]) for name in DENSE_OUTPUTS]
    else:
        k = int(nms["max_dets"])
        dims = {"num_dets": ("TYPE_INT32", (1,)), "boxes": ("TYPE_FP32", (k, 4))}
        dims.update(scores=("TYPE_FP32", (k,)), classes=("TYPE_INT32", (k,)))
        outputs = [Tensor(name, *dims[name]) for name in DETECTION_OUTPUTS]
    params = spec_parameters(
        class_names=manifest.class_names,
        preprocess=manifest.preprocess,
        nms=nms,
        anchors_per_level=anchors,
        precision=manifest.precision,
        source_sha256=manifest.engine_sha256,
    )
    params.update(
        trt_flavour=manifest.flavour,
        trt_version=manifest.trt_version,
        onnx_sha256=manifest.onnx_sha256,
        toolkit_version=__version__,
    )
    return {
        "platform": "tensorrt_plan",
        "file_name": "model.plan",
        "data": data,
        "inputs": [Tensor(manifest.input_name or INPUT_NAME, "TYPE_FP32", (3, h, w))],
        "outputs": outputs,
        "batch": manifest.batch_range,
        "parameters": params,
        "note": f"TensorRT {manifest.trt_version}" + (f" on a {manifest.gpu_name}" if manifest.gpu_name else ""),
    }


# ---------------------------------------------------------------------------------------------- text


def config_pbtxt(cfg: TritonRepoConfig, source: dict[str, Any], max_batch: int) -> str:
    """``config.pbtxt`` in protobuf text format (``inference.ModelConfig`` of Triton's model_config.proto)."""
    opt = source["batch"][1]
    preferred = sorted({min(opt, max_batch), max_batch})
    lines = [
        f"name: {_quote(cfg.name)}",
        f"platform: {_quote(source['platform'])}",
        f"max_batch_size: {max_batch}",
        *(_tensor("input", t, nchw=True) for t in source["inputs"]),
        *(_tensor("output", t) for t in source["outputs"]),
        "dynamic_batching {",
        f"  preferred_batch_size: [ {', '.join(map(str, preferred))} ]",
        f"  max_queue_delay_microseconds: {cfg.queue_delay_us}",
        "}",
        "instance_group [",
        f"  {{ count: {cfg.instances} kind: {'KIND_GPU' if cfg.kind == 'gpu' else 'KIND_CPU'} }}",
        "]",
    ]
    for key, value in source["parameters"].items():
        lines.append(f"parameters {{ key: {_quote(key)} value: {{ string_value: {_quote(value)} }} }}")
    return "\n".join(lines) + "\n"


def _tensor(kind: str, t: Tensor, *, nchw: bool = False) -> str:
    fmt = " format: FORMAT_NCHW" if nchw and len(t.dims) == 3 else ""
    dims = ", ".join(str(d) for d in t.dims)
    return f"{kind} [ {{ name: {_quote(t.name)} data_type: {t.data_type}{fmt} dims: [ {dims} ] }} ]"


def _quote(text: str) -> str:
    """A protobuf text-format string literal (UTF-8 kept as is; backslash, quote and newlines escaped)."""
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\r", "\\r")
    return f'"{escaped}"'


def _readme(cfg: TritonRepoConfig, source: dict[str, Any], max_batch: int, repo: Path) -> str:
    gpus = "--gpus all " if cfg.kind == "gpu" else ""
    container = (
        f"Use a Triton release whose TensorRT is {source['note']} (NGC's support matrix lists it): an engine only "
        "runs under the TensorRT version and GPU it was built with."
        if source["platform"] == "tensorrt_plan"
        else "Any recent Triton release with the ONNX Runtime backend runs it."
    )
    return f"""# Triton model `{cfg.name}`

`{source["platform"]}`, batches of 1..{max_batch} (dynamic batching, queue delay {cfg.queue_delay_us} us),
{cfg.instances} instance(s) per {"GPU" if cfg.kind == "gpu" else "CPU"}. Written by retina-deploy {__version__}.
{container}

Start the server on this repository (HTTP 8000, gRPC 8001, metrics 8002):

```
tritonserver --model-repository={repo}
# or in NVIDIA's container (YY.MM: the release chosen above):
docker run {gpus}--rm -p 8000:8000 -p 8001:8001 -p 8002:8002 -v {repo}:/models \\
    nvcr.io/nvidia/tritonserver:YY.MM-py3 tritonserver --model-repository=/models
```

Client (the same `Detections` as a local file; preprocessing and post-processing run in the client):

```python
from retina_deploy.runtime import Detector

det = Detector.load("triton://localhost:8000/{cfg.name}")
print(det.detect(["image.jpg"])[0].to_dict())
```

The metadata parameters in `config.pbtxt` (class names, preprocessing, NMS settings) are what the client reads.
"""
