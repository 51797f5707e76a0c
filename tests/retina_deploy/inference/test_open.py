"""open_model: one function from any model path (checkpoint, .onnx, .engine, triton://) to a Detector."""

import pytest
import torch
from PIL import Image
from testkit.detector_models import checkpoint, exported, images

from retina_deploy.core.errors import ConfigError, ModelFileError
from retina_deploy.inference.open import BACKENDS, FITS, open_model
from retina_deploy.inference.torch_backend import TorchBackend
from retina_deploy.runtime import backends as runtime_backends
from retina_deploy.runtime.detector import Detector


def test_open_model_runs_onnx_in_the_runtimes_detector(tmp_path):
    from retina_deploy.inference.predict import predict_files

    with open_model(exported("onnx"), device="cpu") as detector:
        assert isinstance(detector, Detector) and detector.backend.name == "onnxruntime-cpu"
        img_path = tmp_path / "a.jpg"
        Image.fromarray(images()[0]).save(img_path)
        (tmp_path / "bad.jpg").write_bytes(b"not an image")
        records, errors = predict_files(detector, [img_path, tmp_path / "bad.jpg"], tmp_path / "out")
    assert len(errors) == 1 and "bad.jpg" in errors[0]
    assert (tmp_path / "out" / "a.png").is_file()
    assert records[0]["detections"] and records[0]["width"] == 300  # records follow the input order
    assert "error" in records[1]
    with pytest.raises(ConfigError, match="device"):
        open_model(exported("onnx"), device="gpu7")


def test_open_model_runs_a_checkpoint_in_pytorch():
    threads = torch.get_num_threads()
    try:
        with open_model(checkpoint(), backend="torch", num_threads=1, max_pixels=100_000) as detector:
            assert isinstance(detector.backend, TorchBackend) and detector.source == str(checkpoint())
            assert detector.max_pixels == 100_000
            assert len(detector.detect_one(images()[0])) > 0
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(threads)


def test_a_backend_that_does_not_fit_the_model_is_one_config_error(tmp_path):
    with pytest.raises(ConfigError, match=r"backend 'ort-cpu' does not run a checkpoint \(use auto or torch\)"):
        open_model(checkpoint(), backend="ort-cpu")
    with pytest.raises(ConfigError, match="backend 'torch' does not run an ONNX file"):
        open_model(exported("onnx"), backend="torch")
    with pytest.raises(ConfigError, match="backend 'torch' does not run a Triton model"):
        open_model("triton://localhost:8000/m", backend="torch")
    with pytest.raises(ConfigError, match="backend must be one of"):
        open_model(exported("onnx"), backend="pytorch")
    with pytest.raises(ConfigError, match="torch.compile runs checkpoints only"):
        open_model(exported("onnx"), compile_model=True)
    with pytest.raises(ConfigError, match="runs on the CPU"):
        open_model(exported("onnx"), backend="openvino", device="cuda:0")
    for bad in ({"max_pixels": 0}, {"num_threads": 0}):
        with pytest.raises(ConfigError, match=next(iter(bad))):
            open_model(checkpoint(), **bad)
    with pytest.raises(ModelFileError, match="no such model file or checkpoint folder"):
        open_model(tmp_path / "missing")


@pytest.mark.skipif(torch.cuda.device_count() > 7, reason="this machine has a CUDA device 7")
def test_a_checkpoint_on_an_absent_cuda_device_is_refused():
    with pytest.raises(ConfigError, match=r"device 'cuda:7': no such CUDA device here"):
        open_model(checkpoint(), device="cuda:7")


def test_backend_names_live_in_the_runtime_plus_torch():
    assert BACKENDS == (*runtime_backends.BACKENDS, "torch")
    assert {b for fits in FITS.values() for b in fits} == set(BACKENDS)
    assert FITS["checkpoint"] == ("auto", "torch")
