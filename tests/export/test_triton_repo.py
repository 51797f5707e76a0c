"""triton-repo: config.pbtxt parsed with Triton's own protobuf definitions (tritonclient's model_config_pb2)
and matched against the model for each export variant, as an ONNX file and as an engine (with manifest)."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from google.protobuf import json_format, text_format
from testkit.export_helpers import BATCH, SIZE
from tritonclient.grpc import model_config_pb2

from retina_deploy.core.errors import ConfigError, ModelFileError
from retina_deploy.core.fileio import sha256_file
from retina_deploy.export.triton_repo import TritonRepoConfig, config_pbtxt, write_triton_repo
from retina_deploy.runtime.contract.manifest import fields_from_onnx_metadata, write_manifest
from retina_deploy.runtime.contract.onnx_metadata import OnnxMetadata

ONNX_TYPES = {1: "TYPE_FP32", 6: "TYPE_INT32"}


def read_onnx_metadata(path: Path) -> dict:
    props = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
    return OnnxMetadata.from_props(props, str(path)).to_dict()


def parse(path: Path) -> model_config_pb2.ModelConfig:
    return text_format.Parse(path.read_text(encoding="utf-8"), model_config_pb2.ModelConfig())


def graph_tensors(path: Path) -> list[tuple[str, str, list[int]]]:
    """(name, Triton type, dims after the batch axis) of the ONNX graph's inputs, then outputs."""
    g = onnx.load(str(path), load_external_data=False).graph
    return [
        (v.name, ONNX_TYPES[v.type.tensor_type.elem_type], [d.dim_value for d in v.type.tensor_type.shape.dim][1:])
        for v in [*g.input, *g.output]
    ]


def config_tensors(cfg) -> list[tuple[str, str, list[int]]]:
    return [(t.name, model_config_pb2.DataType.Name(t.data_type), list(t.dims)) for t in [*cfg.input, *cfg.output]]


def fake_engine(onnx_path: Path, out: Path, flavour: str = "tensorrt", batch=None) -> Path:
    """Opaque bytes with the manifest build-engine would write for ``onnx_path`` (no TensorRT needed)."""
    out.write_bytes(b"not a real plan " + onnx_path.name.encode())
    fields = fields_from_onnx_metadata(read_onnx_metadata(onnx_path))
    if batch:
        fields["batch_range"] = list(batch)
    write_manifest(out, flavour=flavour, trt_version="10.13.0", onnx_sha256=sha256_file(onnx_path), **fields)
    return out


def check_common(cfg, onnx_path: Path, model_file: Path, source_sha256: str) -> None:
    meta = read_onnx_metadata(onnx_path)
    assert cfg.name == "retinanet" and cfg.max_batch_size == BATCH[2]
    assert config_tensors(cfg) == graph_tensors(onnx_path)
    assert cfg.input[0].format == model_config_pb2.ModelInput.FORMAT_NCHW
    assert list(cfg.dynamic_batching.preferred_batch_size) == [BATCH[1], BATCH[2]]
    assert cfg.dynamic_batching.max_queue_delay_microseconds == 500
    assert [(g.count, g.kind) for g in cfg.instance_group] == [(1, model_config_pb2.ModelInstanceGroup.KIND_GPU)]
    params = {k: v.string_value for k, v in cfg.parameters.items()}
    assert json.loads(params["class_names"]) == meta["class_names"]
    assert json.loads(params["nms"]) == meta["nms"]
    assert json.loads(params["preprocess"])["size"] == list(SIZE)
    assert json.loads(params["anchors_per_level"]) == meta["anchors_per_level"]
    assert json.loads(params["source_sha256"]) == source_sha256 == sha256_file(model_file)
    readme = (model_file.parents[1] / "README.md").read_text()
    assert (
        "tritonserver --model-repository=" in readme and 'Detector.load("triton://localhost:8000/retinanet")' in readme
    )


@pytest.mark.parametrize("nms", ["onnx", "efficient", "none"])
def test_engine_repository_matches_the_model(r18_exports, tmp_path, nms):
    onnx_path = r18_exports[nms]
    engine = fake_engine(onnx_path, tmp_path / "model.engine")
    result = write_triton_repo(engine, tmp_path / "repo")
    cfg = parse(result.config_path)
    assert cfg.platform == "tensorrt_plan" == result.platform
    plan = tmp_path / "repo" / "retinanet" / "1" / "model.plan"
    assert plan.read_bytes() == engine.read_bytes()
    check_common(cfg, onnx_path, plan, sha256_file(engine))
    assert cfg.parameters["trt_version"].string_value == "10.13.0"


@pytest.mark.parametrize("nms", ["onnx", "none"])
def test_onnx_repository_matches_the_model(r18_exports, tmp_path, nms):
    onnx_path = r18_exports[nms]
    result = write_triton_repo(onnx_path, tmp_path / "repo", TritonRepoConfig(max_batch=4, instances=2, kind="cpu"))
    cfg = parse(result.config_path)
    assert cfg.platform == "onnxruntime_onnx"
    model = tmp_path / "repo" / "retinanet" / "1" / "model.onnx"
    assert model.read_bytes() == onnx_path.read_bytes()
    cfg.instance_group[0].count, cfg.instance_group[0].kind = 1, model_config_pb2.ModelInstanceGroup.KIND_GPU
    check_common(cfg, onnx_path, model, sha256_file(onnx_path))


def test_efficient_onnx_is_refused_with_the_fix(r18_exports, tmp_path):
    with pytest.raises(ModelFileError, match="EfficientNMS_TRT node is a TensorRT plugin.*build an engine"):
        write_triton_repo(r18_exports["efficient"], tmp_path / "repo")


def test_options_and_refusals(r18_exports, tmp_path):
    onnx_path = r18_exports["onnx"]
    cfg = parse(
        write_triton_repo(onnx_path, tmp_path / "r", TritonRepoConfig(max_batch=2, queue_delay_us=0)).config_path
    )
    assert cfg.max_batch_size == 2 and list(cfg.dynamic_batching.preferred_batch_size) == [2]
    with pytest.raises(ConfigError, match="pass --overwrite"):
        write_triton_repo(onnx_path, tmp_path / "r")
    write_triton_repo(onnx_path, tmp_path / "r", TritonRepoConfig(overwrite=True))
    assert parse(tmp_path / "r" / "retinanet" / "config.pbtxt").max_batch_size == BATCH[2]
    with pytest.raises(ConfigError, match="exceeds the model's maximum batch 4"):
        write_triton_repo(onnx_path, tmp_path / "r2", TritonRepoConfig(max_batch=8))
    with pytest.raises(ModelFileError, match="TensorRT-RTX|tensorrt-rtx"):
        write_triton_repo(fake_engine(onnx_path, tmp_path / "rtx.engine", "tensorrt-rtx"), tmp_path / "r3")
    with pytest.raises(ModelFileError, match="rebuild with --batch 1 OPT 4"):
        write_triton_repo(fake_engine(onnx_path, tmp_path / "b2.engine", batch=(2, 2, 4)), tmp_path / "r4")
    tampered = fake_engine(onnx_path, tmp_path / "t.engine")
    tampered.write_bytes(b"swapped")
    with pytest.raises(ModelFileError, match="sha256"):
        write_triton_repo(tampered, tmp_path / "r5")
    for bad in ({"name": "../x"}, {"instances": 0}, {"queue_delay_us": -1}, {"queue_delay_us": 2**64}, {"kind": "tpu"}):
        with pytest.raises(ConfigError):
            TritonRepoConfig(**bad)


def test_parameters_survive_quoting():
    names = ['a "quoted" name', "back\\slash", "new\nline", "été"]
    source = {
        "platform": "onnxruntime_onnx",
        "inputs": [],
        "outputs": [],
        "batch": (1, 1, 1),
        "parameters": {"class_names": json.dumps(names, ensure_ascii=False)},
    }
    cfg = text_format.Parse(config_pbtxt(TritonRepoConfig(), source, 1), model_config_pb2.ModelConfig())
    assert json.loads(cfg.parameters["class_names"].string_value) == names


def test_cli(r18_exports, tmp_path):
    cmd = [sys.executable, "-m", "retina_deploy.cli", "triton-repo", str(r18_exports["none"]), str(tmp_path / "repo")]
    done = subprocess.run([*cmd, "--instances", "2"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "onnxruntime_onnx, max_batch_size 4" in done.stdout and "tritonserver --model-repository=" in done.stdout
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert again.returncode == 1 and again.stderr.count("\n") == 1 and "pass --overwrite" in again.stderr
    bad = subprocess.run([*cmd, "--max-batch", "0"], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 1 and bad.stderr.count("\n") == 1


@pytest.mark.parametrize("nms", ["onnx", "none"])
def test_detector_over_the_repository_equals_the_onnx_file(r18_exports, tmp_path, nms):
    """The repository served by a stand-in that runs its model.onnx with ONNX Runtime and answers with
    the config as Triton's JSON: triton:// gives the same Detections as the file itself."""
    import onnxruntime as ort
    from testkit.triton_fake import FakeTriton

    from retina_deploy.runtime import Detector

    result = write_triton_repo(r18_exports[nms], tmp_path / "repo")
    config = json_format.MessageToDict(parse(result.config_path), preserving_proto_field_name=True)
    session = ort.InferenceSession(str(result.model_dir / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    fake = FakeTriton("retinanet", config, lambda arrays: dict(zip(names, session.run(names, arrays), strict=True)))
    rng = np.random.default_rng(3)
    images = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in ((100, 180), (256, 90), (64, 64))]
    with Detector.load(r18_exports[nms], backend="ort-cpu") as local:
        want = local.detect(images)
    with fake.running() as url, Detector.load(url) as remote:
        assert remote.max_batch == BATCH[2] and remote.class_names == local.class_names
        got = remote.detect(images)
    for g, w in zip(got, want, strict=True):
        assert len(g) == len(w) > 0
        np.testing.assert_allclose(g.boxes, w.boxes, atol=1e-3)
        np.testing.assert_allclose(g.scores, w.scores, atol=1e-5)
        assert g.class_names == w.class_names
