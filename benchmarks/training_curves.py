"""Plot val AP50 against images seen for training runs and torchvision's same-budget run.

Each ``--run LABEL=RUN_DIR`` reads ``RUN_DIR/metrics.csv`` (as written by ``retina-deploy train``; the batch size
from ``RUN_DIR/config.json``) and plots the trained weights' scores (``val_raw`` rows in a run with
``--ema-decay``, else ``val``), so that runs with and without a weight average compare alike; each
``--torchvision LABEL=FILE`` reads the ``curve`` of ``benchmarks/torchvision_same_budget.py --json FILE`` (the
trained weights, ``raw``). Optional ``--points LABEL=IMAGES:AP50,...`` adds a curve given by hand, for a run
whose metrics file is gone. Writes one PNG and prints the points as a table.

    python benchmarks/training_curves.py --run "cosine=runA" --run "flat-cosine=runJ2" \
        --torchvision "torchvision=tv.json" --out curves.png
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path


def run_curve(run_dir: Path) -> list[tuple[int, float]]:
    """[(images seen, AP50)] of the trained weights of a run folder (``val_raw`` rows, else ``val``)."""
    batch = json.loads((run_dir / "config.json").read_text())["train"]["batch_size"]
    with open(run_dir / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    kind = "val_raw" if any(r["kind"] == "val_raw" for r in rows) else "val"
    rows = [r for r in rows if r["kind"] == kind]
    return [(int(r["iteration"]) * batch, float(r["AP50"])) for r in rows]


def torchvision_curve(path: Path) -> list[tuple[int, float]]:
    return [(p["images_seen"], p["raw"]["AP50"]) for p in json.loads(path.read_text())["curve"]]


def hand_curve(text: str) -> list[tuple[int, float]]:
    points = []
    for item in text.split(","):
        images, ap50 = item.split(":")
        points.append((int(images), float(ap50)))
    return points


def _labelled(value: str) -> tuple[str, str]:
    label, sep, rest = value.partition("=")
    if not sep or not label or not rest:
        raise argparse.ArgumentTypeError(f"expected LABEL=VALUE, got {value!r}")
    return label, rest


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run", type=_labelled, action="append", default=[], help="LABEL=RUN_DIR")
    p.add_argument("--torchvision", type=_labelled, action="append", default=[], help="LABEL=JSON")
    p.add_argument("--points", type=_labelled, action="append", default=[], help="LABEL=IMAGES:AP50,...")
    p.add_argument("--title", default="val AP50 against images seen (make-shapes, ResNet-18, 256 px)")
    p.add_argument("--out", type=Path, required=True, help="PNG to write")
    args = p.parse_args()

    curves = [(label, run_curve(Path(d)), "-") for label, d in args.run]
    curves += [(label, torchvision_curve(Path(f)), "--") for label, f in args.torchvision]  # torchvision: dashed
    curves += [(label, hand_curve(text), "-") for label, text in args.points]
    if not curves:
        p.error("give at least one --run, --torchvision or --points")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=110)
    colours = plt.get_cmap("tab10" if len(curves) <= 10 else "tab20").colors
    for i, (label, points, style) in enumerate(curves):
        xs, ys = zip(*points, strict=True)
        ax.plot(xs, ys, marker="o", linestyle=style, color=colours[i % len(colours)], label=label)
        print(f"{label:40s} " + "  ".join(f"{x:>6d}:{y:.3f}" for x, y in points))
    ax.set_xlabel("images seen")
    ax.set_ylabel("val AP50")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.set_title(args.title, fontsize=10)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out)


if __name__ == "__main__":
    main()
