"""Training and evaluation loops on tiny synthetic data (ResNet-18, 128 px, batch 4, no workers).

The resume test is the key property: a run killed after k iterations and resumed logs exactly the
losses, and ends with exactly the weights, of the same run left uninterrupted.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from retina_deploy.core.errors import ConfigError, DatasetError
from retina_deploy.data.coco import load_coco
from retina_deploy.data.shapes import make_shapes
from retina_deploy.evaluation.loop import evaluate_detector
from retina_deploy.evaluation.metrics import METRIC_NAMES
from retina_deploy.inference.torch_backend import TorchBackend, checkpoint_spec
from retina_deploy.model import build_model
from retina_deploy.model.checkpoint import load_checkpoint
from retina_deploy.model.config import ModelConfig
from retina_deploy.runtime.detector import Detector
from retina_deploy.runtime.image.preprocess import PreprocessConfig
from retina_deploy.training.distributed import epoch_batches, iters_per_epoch
from retina_deploy.training.loop import StepOptions, train_step
from retina_deploy.training.optim import LRSchedule, clamp_warmup
from retina_deploy.training.run import TrainConfig, train

REPO = Path(__file__).resolve().parents[3]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> dict[str, Path]:
    """16 training images and 4 validation images of at most 128 px (non-square), 6 classes."""
    root = tmp_path_factory.mktemp("shapes")
    train_dir = make_shapes(root / "train", num_images=16, size=128, seed=0)
    val_dir = make_shapes(root / "val", num_images=4, size=128, seed=1)
    return {
        "images": train_dir / "images",
        "annotations": train_dir / "annotations.json",
        "val_images": val_dir / "images",
        "val_annotations": val_dir / "annotations.json",
    }


def tiny_config(shapes: dict[str, Path], out: Path, **overrides) -> TrainConfig:
    base = dict(
        **shapes,
        out=out,
        backbone="resnet18",
        backbone_norm="bn",  # random init: trainable BatchNorm, as for training from scratch
        size=(128, 128),
        batch_size=4,
        workers=0,
        warmup_iters=4,
        amp="none",
        device="cpu",
    )
    base.update(overrides)
    return TrainConfig(**base)


def read_metrics(run_dir: Path, kind: str = "train") -> list[dict[str, str]]:
    with open(run_dir / "metrics.csv", newline="") as f:
        return [row for row in csv.DictReader(f) if row["kind"] == kind]


def epoch_mean(rows: list[dict[str, str]], epoch: int, key: str) -> float:
    values = [float(r[key]) for r in rows if int(r["epoch"]) == epoch]
    return sum(values) / len(values)


@pytest.mark.slow
def test_short_run_writes_checkpoints_and_losses_decrease(shapes, tmp_path):
    run = train(tiny_config(shapes, tmp_path / "run", iters=20, hflip=0.0))  # 5 epochs of 4 batches
    for name in ("last", "best"):
        model, info = load_checkpoint(run / name)
        assert info.class_names == ("circle", "square", "triangle", "star", "cross", "ring")
        assert info.model.backbone == "resnet18" and info.preprocess.size == (128, 128)
        assert set(info.extra) >= {"epoch", "batch", "iteration", "metrics"}
    assert load_checkpoint(run / "last")[1].extra["iteration"] == 20
    rows = read_metrics(run)
    assert [int(r["iteration"]) for r in rows] == list(range(1, 21))
    assert all(torch.isfinite(torch.tensor([float(r["loss_cls"]), float(r["loss_box"])])).all() for r in rows)
    # Every epoch sees all 16 images once (no flip), so epoch means compare like with like.
    assert epoch_mean(rows, 4, "loss_cls") < epoch_mean(rows, 0, "loss_cls")
    assert epoch_mean(rows, 4, "loss_box") < 0.9 * epoch_mean(rows, 0, "loss_box")
    val = read_metrics(run, "val")
    assert [int(r["epoch"]) for r in val] == [0, 1, 2, 3, 4]
    assert all(0.0 <= float(r["AP"]) <= 1.0 for r in val)
    saved = json.loads((run / "config.json").read_text())
    assert saved["train"]["iters"] == 20 and saved["model"]["num_classes"] == 6
    assert TrainConfig.for_resume(run).iters == 20
    assert "epoch 4:" in (run / "train.log").read_text()
    state = torch.load(run / "train_state.pt", weights_only=True)
    assert state["progress"] == {"epoch": 5, "batch": 0, "iteration": 20}


def test_validation_every_n_epochs_and_at_the_end(shapes, tmp_path):
    # 4 batches an epoch, 10 iterations: epochs 0, 1 whole and 2 cut at 2 batches. Every 2nd epoch -> after
    # epoch 1 (the 2nd), then the run's end (epoch 2) although 3 is not a multiple of 2.
    run = train(tiny_config(shapes, tmp_path / "run", iters=10, val_every_epochs=2))
    assert [int(r["epoch"]) for r in read_metrics(run, "val")] == [1, 2]
    assert load_checkpoint(run / "best")[1].extra["iteration"] in (8, 10)  # best/ only from validated weights


@pytest.mark.parametrize("value", [0, -1, 1.5, True])
def test_val_every_epochs_refuses_bad_values(shapes, tmp_path, value):
    with pytest.raises(ConfigError, match="val_every_epochs must be an integer >= 1"):
        tiny_config(shapes, tmp_path / "a", iters=1, val_every_epochs=value)


@pytest.mark.slow
def test_resume_matches_uninterrupted_run_bit_for_bit(shapes, tmp_path):
    # Batch 2: 8 iterations per epoch. Checkpoints every 5 and at epoch ends -> states at 5, 8, 10, 12.
    # Killed right after iteration 11, the run resumes from iteration 10 (epoch 1, batch 2) and redoes 11.
    cfg = dict(iters=12, batch_size=2, checkpoint_every_iters=5, scale_jitter=(0.8, 1.2))
    full = train(tiny_config(shapes, tmp_path / "full", **cfg))
    killed = train(tiny_config(shapes, tmp_path / "killed", **cfg), stop_after_iters=11)
    state = torch.load(killed / "train_state.pt", weights_only=True)
    assert state["progress"] == {"epoch": 1, "batch": 2, "iteration": 10}
    assert len(read_metrics(killed)) == 11
    resumed = train(TrainConfig.for_resume(killed))
    assert resumed == killed

    def losses(run: Path) -> list[tuple[str, str, str, str]]:
        return [(r["iteration"], r["loss_cls"], r["loss_box"], r["lr"]) for r in read_metrics(run)]

    assert len(losses(full)) == 12
    assert losses(resumed) == losses(full)  # the CSV holds exact float reprs
    assert [r["AP"] for r in read_metrics(resumed, "val")] == [r["AP"] for r in read_metrics(full, "val")]
    a, b = load_file(full / "last" / "model.safetensors"), load_file(resumed / "last" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert train(TrainConfig.for_resume(resumed)) == resumed  # a finished run has nothing left to do
    assert len(read_metrics(resumed)) == 12


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


DDP_SCRIPT = """
import json, logging, os, sys
from retina_deploy.training.run import TrainConfig, train
args = json.loads(sys.argv[1])
logging.basicConfig(filename=f"{args['logs']}/rank{os.environ['RANK']}.log", level=logging.DEBUG, format="%(message)s")
train(TrainConfig(**args["cfg"]))
"""


@pytest.mark.slow
def test_two_process_gloo_ddp(shapes, tmp_path):
    script = tmp_path / "ddp_train.py"
    script.write_text(DDP_SCRIPT)
    (tmp_path / "logs").mkdir()
    cfg = tiny_config(shapes, tmp_path / "run", iters=3, batch_size=2, val_images=None, val_annotations=None)
    cfg = {k: str(v) if isinstance(v, Path) else v for k, v in dataclasses.asdict(cfg).items()}
    args = json.dumps({"cfg": cfg, "logs": str(tmp_path / "logs")})
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]
    command += ["--master_addr", "127.0.0.1", "--master_port", str(_free_port()), str(script), args]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CI": "true"}
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    run = tmp_path / "run"
    assert load_checkpoint(run / "last")[1].extra["iteration"] == 3
    assert [int(r["iteration"]) for r in read_metrics(run)] == [1, 2, 3]  # rank 0 alone wrote
    consumed = {}
    for rank in (0, 1):
        text = (tmp_path / "logs" / f"rank{rank}.log").read_text()
        found = re.findall(rf"rank {rank} iteration (\d+) image_ids \[([\d, ]+)\]", text)
        consumed[rank] = {int(it): {int(i) for i in ids.split(",")} for it, ids in found}
        assert sorted(consumed[rank]) == [0, 1, 2]
    for it in range(3):
        assert not consumed[0][it] & consumed[1][it]  # each step, the two ranks train on different images
    # 16 images / (2 ranks x 2) = 4 steps per epoch: the 3 steps cover 12 distinct images.
    assert len(set().union(*consumed[0].values(), *consumed[1].values())) == 12


def test_time_budget_ends_the_run(shapes, tmp_path):
    # 0.6 s: the budget runs out during the first step; the run then saves last/ and its state.
    run = train(tiny_config(shapes, tmp_path / "run", max_minutes=0.01, val_images=None, val_annotations=None))
    state = torch.load(run / "train_state.pt", weights_only=True)
    assert state["progress"]["iteration"] >= 1 and state["elapsed_s"] >= 0.6
    assert load_checkpoint(run / "last")[1].extra["iteration"] == state["progress"]["iteration"]
    assert not (run / "best").exists()  # best/ needs a validation set


def _torch_detector(model, settings: ModelConfig, class_names) -> Detector:
    """A model in memory behind the runtime's Detector at 128 x 128, as training's validation runs it."""
    spec = checkpoint_spec(settings, class_names, PreprocessConfig(size=(128, 128)))
    return Detector(TorchBackend(model, input_size=(128, 128), max_dets=spec.nms.max_dets), spec)


def test_validation_boxes_in_original_pixels(tmp_path):
    # Images of 150..200 px shown to the network at 128 px: input and original coordinates differ.
    data = make_shapes(tmp_path / "big", num_images=4, size=200, seed=3)
    coco = load_coco(data / "images", data / "annotations.json")
    torch.manual_seed(0)
    # score_thresh 0 keeps even untrained scores, so large anchors clipped at the image edge show up.
    model = build_model(ModelConfig(backbone="resnet18", num_classes=6, score_thresh=0.0, detections_per_img=50))
    metrics, results = evaluate_detector(_torch_detector(model, model.cfg, coco.class_names), coco, batch_size=3)
    assert tuple(metrics) == METRIC_NAMES
    assert all(v is None or 0.0 <= v <= 1.0 for v in metrics.values())
    sizes = {r.image_id: (r.width, r.height) for r in coco.records}
    assert {r["image_id"] for r in results} == set(sizes)
    assert {r["category_id"] for r in results} <= set(coco.category_ids)
    for image_id, (width, height) in sizes.items():
        boxes = torch.tensor([r["bbox"] for r in results if r["image_id"] == image_id])
        x2, y2 = boxes[:, 0] + boxes[:, 2], boxes[:, 1] + boxes[:, 3]
        assert (boxes[:, :2] >= 0).all() and (x2 <= width + 0.02).all() and (y2 <= height + 0.02).all()


class ContentBoxes(torch.nn.Module):
    """A stand-in detector: per image, the whole non-padded (non-zero) area and its central quarter, in input pixels."""

    def forward(self, images: torch.Tensor) -> list[dict[str, torch.Tensor]]:
        out = []
        for image in images:
            content = image.abs().sum(0) > 0
            h, w = int(content.any(1).sum()), int(content.any(0).sum())
            boxes = torch.tensor([[0.0, 0.0, w, h], [w / 4, h / 4, 3 * w / 4, 3 * h / 4]])
            out.append({"boxes": boxes, "scores": torch.tensor([0.9, 0.8]), "labels": torch.tensor([0, 1])})
        return out


def test_predictions_map_back_to_original_pixels(tmp_path):
    data = make_shapes(tmp_path / "big", num_images=3, size=200, seed=4)
    coco = load_coco(data / "images", data / "annotations.json")
    settings = ModelConfig(num_classes=len(coco.class_names), detections_per_img=2)
    _, results = evaluate_detector(_torch_detector(ContentBoxes(), settings, coco.class_names), coco, batch_size=2)
    for record in coco.records:  # 150..200 px images letterboxed into 128 x 128
        whole, quarter = [r["bbox"] for r in results if r["image_id"] == record.image_id]
        w, h = record.width, record.height
        # the content is round(w * scale) input pixels wide: back in original pixels within half a pixel / scale
        assert whole == pytest.approx([0, 0, w, h], abs=1.0)
        assert quarter == pytest.approx([w / 4, h / 4, w / 2, h / 2], abs=1.0)
        assert max(w, h) > 128  # so input pixels would have failed the checks above


def test_cls_loss_weight_scales_only_the_classification_gradient():
    # With plain SGD at lr 1 the update is minus the gradient: it must be 3 * d(loss_cls) + d(loss_box).
    torch.manual_seed(0)
    model = build_model(ModelConfig(backbone="resnet18", backbone_norm="bn", num_classes=3)).train()
    images = torch.randn(2, 3, 128, 128)
    targets = [
        {"boxes": torch.tensor([[10.0, 12.0, 60.0, 70.0]]), "labels": torch.tensor([2])},
        {"boxes": torch.tensor([[30.0, 5.0, 90.0, 40.0]]), "labels": torch.tensor([0])},
    ]
    params = [p for p in model.parameters() if p.requires_grad]
    state = {k: v.clone() for k, v in model.state_dict().items()}
    losses = model(images, targets)
    grad_cls = torch.autograd.grad(losses["loss_cls"], params, retain_graph=True, allow_unused=True)
    grad_box = torch.autograd.grad(losses["loss_box"], params, allow_unused=True)
    model.load_state_dict(state)  # the forward pass above moved the BatchNorm running statistics
    before = [p.detach().clone() for p in params]
    opts = StepOptions(torch.device("cpu"), cls_loss_weight=3.0)
    logged = train_step(model, images, targets, torch.optim.SGD(params, lr=1.0), opts)
    assert logged.tolist() == pytest.approx([losses["loss_cls"].item(), losses["loss_box"].item()], rel=1e-5)
    both = 0
    for p, p0, gc, gb in zip(params, before, grad_cls, grad_box, strict=True):
        expected = 3.0 * (gc if gc is not None else 0) + (gb if gb is not None else 0)
        torch.testing.assert_close(p0 - p.detach(), torch.as_tensor(expected).expand_as(p0), rtol=1e-3, atol=1e-6)
        both += gc is not None and gb is not None
    assert both > 0  # the shared backbone and FPN get both gradients


@pytest.mark.parametrize("weight", [0, -1.0, math.nan, math.inf, True, "8"])
def test_cls_loss_weight_refuses_bad_values(shapes, tmp_path, weight):
    with pytest.raises(ConfigError, match="cls_loss_weight"):
        tiny_config(shapes, tmp_path / "a", iters=1, cls_loss_weight=weight)
    assert not (tmp_path / "a").exists()


def test_bad_inputs(shapes, tmp_path):
    with pytest.raises(ConfigError, match="length"):
        tiny_config(shapes, tmp_path / "a")
    with pytest.raises(ConfigError, match="both val_images and val_annotations"):
        tiny_config(shapes, tmp_path / "a", iters=1, val_annotations=None)
    with pytest.raises(ConfigError, match="optimizer"):
        tiny_config(shapes, tmp_path / "a", iters=1, optimizer="adam")
    ann = json.loads(shapes["annotations"].read_text())
    empty = tmp_path / "empty.json"
    empty.write_text(json.dumps({**ann, "annotations": []}))
    with pytest.raises(DatasetError, match="no object annotations"):
        train(tiny_config(shapes, tmp_path / "b", iters=1, annotations=empty))
    no_images = tmp_path / "no_images.json"
    no_images.write_text(json.dumps({**ann, "images": [], "annotations": []}))
    with pytest.raises(DatasetError, match="'images' is empty"):
        train(tiny_config(shapes, tmp_path / "b", iters=1, annotations=no_images))
    other = tmp_path / "other_classes.json"
    val = json.loads(shapes["val_annotations"].read_text())
    other.write_text(json.dumps({**val, "categories": [{**c, "name": c["name"] + "s"} for c in val["categories"]]}))
    with pytest.raises(DatasetError, match="validation classes"):
        train(tiny_config(shapes, tmp_path / "b", iters=1, val_annotations=other))
    previous = tmp_path / "previous"
    previous.mkdir()
    (previous / "config.json").write_text("{}")
    with pytest.raises(ConfigError, match="use --resume"):
        train(tiny_config(shapes, previous, iters=1))
    assert not (tmp_path / "b").exists()  # nothing written for refused runs


def test_resume_refuses_changed_config(shapes, tmp_path):
    run = tmp_path / "run"
    train(tiny_config(shapes, run, iters=1, val_images=None, val_annotations=None), stop_after_iters=1)
    with pytest.raises(ConfigError, match="only"):
        TrainConfig.for_resume(run, batch_size=2)
    changed = dataclasses.replace(TrainConfig.for_resume(run), lr=0.5)
    with pytest.raises(ConfigError, match="lr"):
        train(changed)
    with pytest.raises(ConfigError, match="not a training run"):
        TrainConfig.for_resume(tmp_path)


def test_batch_order_is_a_pure_function_of_seed_and_epoch():
    # 10 items, batch 2, 2 ranks: ceil(10 / 4) = 3 steps; 12 slots, the first 2 of the permutation repeat.
    assert iters_per_epoch(10, 2, 2) == 3
    ranks = [epoch_batches(10, batch_size=2, seed=0, epoch=1, rank=r, world_size=2) for r in (0, 1)]
    assert ranks[0] == epoch_batches(10, batch_size=2, seed=0, epoch=1, rank=0, world_size=2)
    assert ranks[0] != epoch_batches(10, batch_size=2, seed=0, epoch=2, rank=0, world_size=2)
    assert all(len(b) == 2 for r in ranks for b in r) and len(ranks[0]) == len(ranks[1]) == 3
    flat = [i for r in ranks for b in r for i in b]
    assert sorted(set(flat)) == list(range(10)) and len(flat) == 12


def test_lr_schedule_hand_computed():
    # Warmup 10 of 90 iterations, lr 0.1: iteration 0 -> 0.1 * 0.001; iteration 5 -> 0.1 * (0.001 + 0.999 / 2)
    # times the cosine at 5/90. Step: x0.1 from iteration 60 (2/3), x0.01 from 80 (8/9).
    cosine = LRSchedule(0.1, "cosine", total_iters=90, warmup_iters=10)
    assert cosine.lr(0) == pytest.approx(1e-4 * 0.5 * (1 + 1))
    assert cosine.lr(5) == pytest.approx(0.1 * 0.5005 * 0.5 * (1 + torch.cos(torch.tensor(torch.pi * 5 / 90)).item()))
    assert cosine.lr(45) == pytest.approx(0.05) and cosine.lr(90) == pytest.approx(0.0)
    step = LRSchedule(0.1, "step", total_iters=90, warmup_iters=0)
    assert [step.lr(i) for i in (59, 60, 79, 80)] == pytest.approx([0.1, 0.01, 0.01, 0.001])
    timed = LRSchedule(0.1, "step", total_iters=None, warmup_iters=0)
    assert timed.lr(10_000, time_fraction=0.5) == pytest.approx(0.1)
    assert timed.lr(0, time_fraction=0.7) == pytest.approx(0.01)
    both = LRSchedule(0.1, "step", total_iters=90, warmup_iters=0)  # time or iterations: the further along
    assert both.lr(70, time_fraction=0.1) == pytest.approx(0.01) and both.lr(10, 0.9) == pytest.approx(0.001)
    # flat-cosine over 80 iterations: the peak lr up to iteration 60 (3/4), then a cosine over the last 20:
    # half the peak at iteration 70, 0 at 80.
    flat = LRSchedule(0.1, "flat-cosine", total_iters=80, warmup_iters=0)
    assert [flat.lr(i) for i in (0, 30, 60, 70, 80)] == pytest.approx([0.1, 0.1, 0.1, 0.05, 0.0])
    assert flat.lr(65) == pytest.approx(0.1 * 0.5 * (1 + math.cos(math.pi / 4)))
    assert clamp_warmup(500, 30) == 10 and clamp_warmup(500, None) == 500
