"""``retina-deploy demo``: the whole pipeline on the embedded synthetic data, on CPU or GPU.

make-shapes -> train (ResNet-18, from scratch) -> eval the checkpoint -> export-onnx -> eval the ONNX
file through the runtime -> predict pictures. Writes ``summary.json`` with every stage's numbers.
"""

from __future__ import annotations

import math
import shutil
import time
from pathlib import Path
from typing import Any

from retina_deploy.errors import ConfigError
from retina_deploy.fileio import write_json_atomic

SUMMARY = "summary.json"
MARKER = ".retina-deploy-demo"  # written first: marks a folder this command created and may replace


def _check_args(minutes: float, backbone: str, size: int) -> None:
    """ConfigError for a bad argument, before anything is written or deleted."""
    from retina_deploy.config import BACKBONE_DEPTHS
    from retina_deploy.runtime.preprocess import check_input_size

    if not (isinstance(minutes, (int, float)) and math.isfinite(minutes) and minutes > 0):
        raise ConfigError(f"--minutes must be a number > 0, got {minutes!r}")
    if backbone not in BACKBONE_DEPTHS:
        raise ConfigError(f"--backbone {backbone!r} is not one of {sorted(BACKBONE_DEPTHS)}")
    try:
        check_input_size(size, size)
    except ConfigError as e:
        raise ConfigError(f"--size {size}: {e}") from e


def _prepare_out(out: Path) -> None:
    """Replace a previous demo's folder (it holds the marker); refuse any other non-empty folder or a file."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()):
        earlier = (out / SUMMARY).is_file() and (out / "run" / "config.json").is_file()  # before the marker
        if not ((out / MARKER).is_file() or earlier):
            raise ConfigError(f"--out {out} is not empty and not a previous demo's folder; choose another --out")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).write_text("written by `retina-deploy demo`; the next demo run may replace this folder\n")


def run_demo(
    out: str | Path,
    *,
    minutes: float = 4.0,
    backbone: str = "resnet18",
    size: int = 256,
    num_train: int = 400,
    num_val: int = 50,
    seed: int = 0,
    progress: bool = False,
    log=print,
) -> dict[str, Any]:
    """Run every stage; returns (and writes to ``out/summary.json``) the numbers of each."""
    from retina_deploy.data.coco import load_coco
    from retina_deploy.data.shapes import make_shapes
    from retina_deploy.export.onnx_export import ExportConfig, export_onnx
    from retina_deploy.predict import evaluate_predictor, load_predictor, predict_files
    from retina_deploy.training.config import TrainConfig
    from retina_deploy.training.run import train

    out = Path(out)
    _check_args(minutes, backbone, size)
    _prepare_out(out)
    summary: dict[str, Any] = {"backbone": backbone, "size": size, "train_minutes": minutes}
    t0 = time.perf_counter()
    train_dir = make_shapes(out / "data" / "train", num_images=num_train, size=size, seed=seed)
    val_dir = make_shapes(out / "data" / "val", num_images=num_val, size=size, seed=seed + 1)
    log(f"[1/5] make-shapes: {num_train} train + {num_val} val images ({time.perf_counter() - t0:.0f} s)")

    cfg = TrainConfig(
        images=train_dir / "images",
        annotations=train_dir / "annotations.json",
        val_images=val_dir / "images",
        val_annotations=val_dir / "annotations.json",
        out=out / "run",
        backbone=backbone,
        backbone_norm="bn",  # from scratch: no ImageNet weights are downloaded
        size=(size, size),
        # The README's CPU recipe: a light head, anchors scaled to the input (the defaults suit 512-800 px),
        # small batches for more updates per image seen.
        head_norm="groupnorm",
        fpn_channels=64,
        anchor_sizes=tuple(size // 16 * 2**i for i in range(5)),
        batch_size=4,
        optimizer="adamw",
        lr=1e-3,
        warmup_iters=50,
        workers=0,  # decoding a small PNG takes ~7 ms: loader processes would only compete for the CPU
        max_minutes=minutes,
        epochs=1000,
        seed=seed,
    )
    t0 = time.perf_counter()
    run_dir = train(cfg)
    log(f"[2/5] train: {minutes:g} min budget, run folder {run_dir} ({time.perf_counter() - t0:.0f} s)")

    val = load_coco(val_dir / "images", val_dir / "annotations.json")
    ckpt = run_dir / "best"
    metrics, _ = evaluate_predictor(load_predictor(ckpt), val, progress=progress)
    summary["checkpoint"] = {"path": str(ckpt), "metrics": metrics}
    log(f"[3/5] eval checkpoint: AP {metrics['AP']:.3f}, AP50 {metrics['AP50']:.3f}")

    t0 = time.perf_counter()
    onnx_path = export_onnx(ckpt, out / "model.onnx", ExportConfig(batch=(1, 4, 8)))
    export_s = time.perf_counter() - t0
    onnx_metrics, _ = evaluate_predictor(load_predictor(onnx_path), val, progress=progress)
    summary["onnx"] = {"path": str(onnx_path), "export_seconds": round(export_s, 1), "metrics": onnx_metrics}
    log(f"[4/5] export-onnx + eval with ONNX Runtime: AP {onnx_metrics['AP']:.3f}, AP50 {onnx_metrics['AP50']:.3f}")

    images = sorted((val_dir / "images").iterdir())[:6]
    records, _ = predict_files(load_predictor(onnx_path), images, out / "predictions")
    summary["predictions"] = {"folder": str(out / "predictions"), "images": len(records)}
    log(f"[5/5] predict: {len(records)} annotated images in {out / 'predictions'}")
    write_json_atomic(out / SUMMARY, summary)
    return summary
