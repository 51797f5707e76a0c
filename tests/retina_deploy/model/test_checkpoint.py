"""Checkpoints: round trip, and every way a file can be wrong gives a CheckpointError naming it."""

import json

import pytest
import torch

from retina_deploy.core.errors import CheckpointError
from retina_deploy.model import build_model
from retina_deploy.model.checkpoint import load_checkpoint, read_checkpoint_info, save_checkpoint
from retina_deploy.model.config import ModelConfig
from retina_deploy.model.weights import read_state_dict
from retina_deploy.runtime.image.preprocess import PreprocessConfig

CFG = ModelConfig(backbone="resnet18", num_classes=2, head_norm="groupnorm")
PRE = PreprocessConfig(size=(256, 384))


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    torch.manual_seed(0)
    model = build_model(CFG)
    out = save_checkpoint(model, tmp_path_factory.mktemp("ck") / "ckpt", class_names=["a", "b"], preprocess=PRE)
    return model, out


def test_round_trip(saved):
    model, path = saved
    loaded, info = load_checkpoint(path)
    assert info.model == CFG and info.class_names == ("a", "b") and info.preprocess == PRE
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k
    assert not loaded.training
    # either file of the pair names the checkpoint too
    assert read_checkpoint_info(path / "model.safetensors").model == CFG
    assert read_checkpoint_info(path / "config.json").model == CFG


def _copy(src, dst):
    dst.mkdir()
    for f in src.iterdir():
        (dst / f.name).write_bytes(f.read_bytes())
    return dst


def test_truncated_weights_refused(saved, tmp_path):
    ck = _copy(saved[1], tmp_path / "c")
    data = (ck / "model.safetensors").read_bytes()
    (ck / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="sha256 differs"):
        load_checkpoint(ck)


def test_unknown_config_key_refused(saved, tmp_path):
    ck = _copy(saved[1], tmp_path / "c")
    cfg = json.loads((ck / "config.json").read_text())
    cfg["model"]["num_anchors"] = 12
    (ck / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="num_anchors"):
        load_checkpoint(ck)


def test_foreign_files_refused(saved, tmp_path):
    pth = tmp_path / "model.pth"
    torch.save(saved[0].state_dict(), pth)
    with pytest.raises(CheckpointError, match="PyTorch pickle"):
        load_checkpoint(pth)
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        load_checkpoint(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="model.safetensors is missing"):
        load_checkpoint(tmp_path / "empty")
    ck = _copy(saved[1], tmp_path / "c")
    (ck / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        load_checkpoint(ck)
    (ck / "config.json").write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(CheckpointError, match="not a retina-deploy checkpoint config"):
        load_checkpoint(ck)


def test_pickle_with_code_is_not_executed(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    path = tmp_path / "evil.pth"
    torch.save({"x": Evil()}, path)
    with pytest.raises(CheckpointError, match="not a readable PyTorch weights file"):
        read_state_dict(path)


def test_weights_of_another_architecture_refused(saved, tmp_path):
    ck = _copy(saved[1], tmp_path / "c")
    cfg = json.loads((ck / "config.json").read_text())
    cfg["model"]["backbone"] = "resnet34"
    (ck / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="does not match the model"):
        load_checkpoint(ck)


def test_failed_save_leaves_nothing(tmp_path):
    model = build_model(CFG)
    with pytest.raises(CheckpointError, match="3 class names"):
        save_checkpoint(model, tmp_path / "ck", class_names=["a", "b", "c"], preprocess=PRE)
    assert not (tmp_path / "ck").exists() or not any((tmp_path / "ck").iterdir())


def test_crash_during_write_keeps_previous_checkpoint(saved, tmp_path, monkeypatch):
    import retina_deploy.model.checkpoint as ckpt_module

    ck = _copy(saved[1], tmp_path / "c")
    before = {f.name: f.read_bytes() for f in ck.iterdir()}

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(ckpt_module, "save_file", crash)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(build_model(CFG), ck, class_names=["a", "b"], preprocess=PRE)
    assert {f.name: f.read_bytes() for f in ck.iterdir()} == before  # no temp files, old pair intact
    load_checkpoint(ck)
