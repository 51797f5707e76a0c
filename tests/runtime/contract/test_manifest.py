"""Engine manifests: round trip, sha256 before deserialization, version and GPU mismatches say to rebuild."""

import json

import pytest

from retina_deploy.core.errors import ConfigError, ModelFileError
from retina_deploy.runtime.contract.manifest import (
    EngineManifest,
    check_compatible,
    fields_from_onnx_metadata,
    manifest_path,
    read_manifest,
    read_verified_engine,
    sha256_file,
    verify_engine_file,
    write_manifest,
)
from retina_deploy.runtime.image.preprocess import PreprocessConfig

ONNX_SHA = "ab" * 32
POST = {
    "nms": {"mode": "none", "max_dets": 100, "score_thresh": 0.05, "iou_thresh": 0.5, "topk_per_level": 1000},
    "anchors_per_level": [9216, 2304, 576, 144, 36],
}


def _write(path, **overrides):
    kw = dict(
        flavour="tensorrt-rtx",
        trt_version="1.7.1.116",
        precision="fp32",
        batch_range=(1, 2, 8),
        input_size=(256, 256),
        onnx_sha256=ONNX_SHA,
        class_names=["a", "b"],
        preprocess=PreprocessConfig(size=(256, 256)),
        postprocess=POST,
    )
    kw.update(overrides)
    return write_manifest(path, **kw)


@pytest.fixture
def engine(tmp_path):
    path = tmp_path / "model.engine"
    path.write_bytes(b"\x00engine bytes\x01" * 100)
    return path


def test_round_trip(engine):
    written = _write(engine, gpu_name="NVIDIA H100", compute_capabilities=["9.0"])
    assert manifest_path(engine).name == "model.engine.json"
    assert written.engine_sha256 == sha256_file(engine)
    assert read_manifest(engine) == written
    assert verify_engine_file(engine) == written
    manifest, data = read_verified_engine(engine)
    assert data == engine.read_bytes() and manifest.preprocess_config.size == (256, 256)
    on_disk = json.loads(manifest_path(engine).read_text())
    assert on_disk["format"] == "retina-deploy/engine-manifest" and on_disk["batch_range"] == [1, 2, 8]


def test_tampered_or_truncated_engine_is_refused(engine):
    _write(engine)
    data = bytearray(engine.read_bytes())
    data[7] ^= 0xFF
    engine.write_bytes(bytes(data))
    with pytest.raises(ModelFileError, match="sha256 .* differs .*rebuild"):
        verify_engine_file(engine)
    engine.write_bytes(bytes(data[:50]))
    with pytest.raises(ModelFileError, match="differs"):
        read_verified_engine(engine)
    engine.write_bytes(b"")
    with pytest.raises(ModelFileError, match="empty"):
        read_verified_engine(engine)


def test_missing_or_malformed_manifest(engine, tmp_path):
    with pytest.raises(ModelFileError, match="no manifest"):
        verify_engine_file(engine)
    manifest_path(engine).write_text("{not json")
    with pytest.raises(ModelFileError, match="unreadable engine manifest"):
        verify_engine_file(engine)
    _write(engine)
    d = json.loads(manifest_path(engine).read_text())
    d["surprise"] = 1
    manifest_path(engine).write_text(json.dumps(d))
    with pytest.raises(ModelFileError, match="surprise"):
        read_manifest(engine)
    d.pop("surprise")
    d["format"] = "someone-else"
    manifest_path(engine).write_text(json.dumps(d))
    with pytest.raises(ModelFileError, match="not an engine manifest"):
        read_manifest(engine)
    with pytest.raises(ModelFileError, match="no such engine"):
        verify_engine_file(tmp_path / "absent.engine")


def test_version_and_gpu_mismatches_say_to_rebuild(engine):
    m = _write(
        engine, flavour="tensorrt", trt_version="10.13.0.35", gpu_name="NVIDIA A100", compute_capabilities=["8.0"]
    )
    check_compatible(
        m, engine, flavour="tensorrt", trt_version="10.13.0", gpu_name="NVIDIA A100", compute_capability="8.0"
    )
    cases = [
        (dict(trt_version="10.12.0"), "built with tensorrt 10.13.0.35, installed is 10.12.0"),
        (dict(flavour="tensorrt-rtx"), "runtime asked for is tensorrt-rtx"),
        (dict(compute_capability="8.6"), "compute capability 8.0, this GPU is 8.6"),
        (dict(gpu_name="NVIDIA L4"), "built on a NVIDIA A100, this GPU is a NVIDIA L4"),
    ]
    for kwargs, message in cases:
        with pytest.raises(ModelFileError, match=f"{message}.*rebuild the engine"):
            verify_engine_file(engine, **kwargs)


def test_gpu_free_manifest_matches_any_gpu(engine):
    m = _write(engine)  # TensorRT-RTX engines are built without a GPU: no name, no capability list
    check_compatible(m, engine, gpu_name="NVIDIA RTX 5090", compute_capability="12.0")


def test_bad_values_are_config_errors(engine):
    with pytest.raises(ConfigError, match="flavour"):
        _write(engine, flavour="onnxruntime")
    with pytest.raises(ConfigError, match="batch_range"):
        _write(engine, batch_range=(4, 2, 8))
    with pytest.raises(ConfigError, match="onnx_sha256"):
        _write(engine, onnx_sha256="xyz")
    with pytest.raises(ConfigError, match="multiple of 128"):
        _write(engine, preprocess={"size": [250, 256]})
    with pytest.raises(ModelFileError, match="no such engine"):
        _write(engine.with_name("nothing.engine"))


def test_fields_from_onnx_metadata(engine):
    meta = {
        "class_names": ["a", "b"],
        "input_size": [256, 256],
        "mean": [0.485, 0.456, 0.406],
        "std": [0.229, 0.224, 0.225],
        "channel_order": "rgb",
        "nms": POST["nms"],
        "batch": {"min": 1, "opt": 2, "max": 8},
        "anchors_per_level": POST["anchors_per_level"],
        "precision": "fp32",
    }
    fields = fields_from_onnx_metadata(meta)
    m = write_manifest(engine, flavour="tensorrt-rtx", trt_version="1.7.1", onnx_sha256=ONNX_SHA, **fields)
    assert isinstance(m, EngineManifest) and m.batch_range == (1, 2, 8) and m.postprocess == POST
    with pytest.raises(ConfigError, match="lacks"):
        fields_from_onnx_metadata({"class_names": []})
