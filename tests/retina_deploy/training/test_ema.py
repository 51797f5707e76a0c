"""The weight average (``training.ema``): update rule by hand, config checks, exact resume of a run keeping one."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from retina_deploy.core.errors import ConfigError
from retina_deploy.data.shapes import make_shapes
from retina_deploy.training.ema import ModelEMA, ema_decay_at
from retina_deploy.training.optim import LRSchedule, clamp_warmup
from retina_deploy.training.run import TrainConfig, train

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> dict[str, Path]:
    """8 training images and 2 validation images of at most 128 px, 6 classes."""
    root = tmp_path_factory.mktemp("shapes")
    train_dir = make_shapes(root / "train", num_images=8, size=128, seed=0)
    val_dir = make_shapes(root / "val", num_images=2, size=128, seed=1)
    return {
        "images": train_dir / "images",
        "annotations": train_dir / "annotations.json",
        "val_images": val_dir / "images",
        "val_annotations": val_dir / "annotations.json",
    }


def tiny_config(shapes: dict[str, Path], out: Path, **overrides) -> TrainConfig:
    base = dict(**shapes, out=out, backbone="resnet18", backbone_norm="bn", size=(128, 128), batch_size=4)
    base.update(workers=0, warmup_iters=2, amp="none", device="cpu", fpn_channels=64, head_norm="groupnorm")
    base.update(overrides)
    return TrainConfig(**base)


def read_metrics(run_dir: Path, kind: str) -> list[dict[str, str]]:
    with open(run_dir / "metrics.csv", newline="") as f:
        return [row for row in csv.DictReader(f) if row["kind"] == kind]


def test_decay_ramp_hand_computed():
    # (1 + n) / (10 + n): 2/11 after the first update, 11/20 after the tenth; the ramp passes 0.9 at n = 80.
    assert ema_decay_at(0.9, 1) == pytest.approx(2 / 11)
    assert ema_decay_at(0.9, 10) == pytest.approx(11 / 20)
    assert ema_decay_at(0.9, 80) == pytest.approx(0.9) and ema_decay_at(0.9, 10_000) == 0.9


def test_update_rule_hand_computed():
    model = nn.Sequential(nn.Linear(1, 1), nn.BatchNorm1d(1))
    with torch.no_grad():
        model[0].weight.fill_(1.0)
        model[0].bias.fill_(0.0)
    ema = ModelEMA(model, decay=0.5)
    assert not any(p.requires_grad for p in ema.module.parameters()) and not ema.module.training
    with torch.no_grad():
        model[0].weight.fill_(3.0)
        model[1].num_batches_tracked.fill_(7)
    ema.update(model)  # d = min(0.5, 2/11) = 2/11: 2/11 * 1 + 9/11 * 3
    assert ema.module[0].weight.item() == pytest.approx(2 / 11 * 1.0 + 9 / 11 * 3.0)
    assert ema.module[1].num_batches_tracked.item() == 7  # integers are copied, not averaged
    with torch.no_grad():
        model[0].weight.fill_(-1.0)
    for _ in range(99):
        ema.update(model)
    assert ema.updates == 100
    # Once the ramp exceeds 0.5 (n >= 9) each update halves the distance to -1: it is gone after 100 updates.
    assert ema.module[0].weight.item() == pytest.approx(-1.0, abs=1e-12)
    assert ema.module[0].bias.item() == 0.0 and model[0].weight.item() == -1.0  # the model itself is untouched


def test_state_dict_round_trip():
    model = nn.Linear(2, 2)
    ema = ModelEMA(model, decay=0.99)
    ema.update(model)
    other = ModelEMA(nn.Linear(2, 2), decay=0.99)
    other.load_state_dict(ema.state_dict())
    assert other.updates == 1 and torch.equal(other.module.weight, ema.module.weight)


@pytest.mark.parametrize("bad", [0.0, 1.0, -0.5, math.nan, math.inf, True])
def test_config_refuses_bad_decay(shapes, tmp_path, bad):
    with pytest.raises(ConfigError, match="ema_decay"):
        tiny_config(shapes, tmp_path / "run", iters=1, ema_decay=bad)


@pytest.mark.parametrize("field", ["focal_loss_alpha", "focal_loss_gamma", "focal_loss_gamma_fg"])
@pytest.mark.parametrize("bad", [math.nan, -0.1, math.inf, True])
def test_config_refuses_bad_focal_parameters(shapes, tmp_path, field, bad):
    with pytest.raises(ConfigError, match=field):
        tiny_config(shapes, tmp_path / "run", iters=1, **{field: bad})


def test_focal_parameters_reach_the_model(shapes, tmp_path):
    cfg = tiny_config(shapes, tmp_path / "run", iters=1, focal_loss_alpha=0.5, focal_loss_gamma=1.0)
    model_cfg = cfg.model_config(num_classes=6)
    assert (model_cfg.focal_loss_alpha, model_cfg.focal_loss_gamma, model_cfg.focal_loss_gamma_fg) == (0.5, 1.0, None)
    cfg = tiny_config(shapes, tmp_path / "run", iters=1, focal_loss_gamma_fg=0.0)
    assert cfg.model_config(num_classes=6).focal_loss_gamma_fg == 0.0


def test_recipe_schedule_ends_at_zero():
    # The CPU recipe: 1,250 iterations (5,000 images at batch 4), 50 warm-up, cosine to 0 at the run's end.
    schedule = LRSchedule(2e-3, "cosine", total_iters=1250, warmup_iters=clamp_warmup(50, 1250))
    assert schedule.lr(0) == pytest.approx(2e-6)
    assert schedule.lr(50) == pytest.approx(2e-3 * 0.5 * (1 + math.cos(math.pi * 50 / 1250)))
    assert schedule.lr(1249) == pytest.approx(2e-3 * 0.5 * (1 + math.cos(math.pi * 1249 / 1250)))
    assert schedule.lr(1249) < 1e-8 and schedule.lr(1250) == 0.0


@pytest.mark.slow
def test_resume_restores_the_average_exactly(shapes, tmp_path):
    # Batch 2, 8 images: 4 iterations per epoch; states at 3, 4 (epoch end) and 6. Killed after 5: resumes from 4.
    cfg = dict(iters=6, batch_size=2, checkpoint_every_iters=3, ema_decay=0.9, scale_jitter=(0.8, 1.2))
    full = train(tiny_config(shapes, tmp_path / "full", **cfg))
    killed = train(tiny_config(shapes, tmp_path / "killed", **cfg), stop_after_iters=5)
    state = torch.load(killed / "train_state.pt", weights_only=True)
    assert state["progress"]["iteration"] == 4 and state["ema"]["updates"] == 4
    saved = json.loads((killed / "config.json").read_text())
    for name in ("focal_loss_alpha", "focal_loss_gamma", "focal_loss_gamma_fg"):  # as saved before these existed
        del saved["train"][name]
    (killed / "config.json").write_text(json.dumps(saved))
    resumed = train(TrainConfig.for_resume(killed))
    a, b = load_file(full / "last" / "model.safetensors"), load_file(resumed / "last" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    final = torch.load(full / "train_state.pt", weights_only=True)
    assert final["ema"]["updates"] == 6
    assert all(torch.equal(a[k], final["ema"]["module"][k]) for k in a)  # last/ holds the average ...
    assert not all(torch.equal(a[k], final["model"][k]) for k in a)  # ... not the trained weights
    assert [r["AP"] for r in read_metrics(resumed, "val")] == [r["AP"] for r in read_metrics(full, "val")]
    assert len(read_metrics(full, "val_raw")) == len(read_metrics(full, "val")) == 2
