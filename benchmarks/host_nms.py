"""Host top-k + NMS of ``--nms none`` files: the old per-class loops, ``runtime.post.host_nms`` (numpy) and the C++
one (``runtime.post.native``, where the package was built with it), one run.

The implementations post-process the same candidate sets (dense outputs of real exported models on
the same images), timed alternately with ``bench``'s timer, so each ratio comes from one run:

    python benchmarks/host_nms.py --out DIR [--images 8] [--iters 5] [--thresholds 0.05 0.001] [--json OUT]
        [--model M.onnx ...] [--previous PREV.py] [--clock wall|thread]

Without ``--model`` two ResNet-18 ``--nms none`` files are exported first (needs torch; random weights):
a 256-px, 80-class one (``bench_detector.py``'s model: scores around sigmoid(-3) = 0.047, so at a 0.05
threshold every top-k candidate of every level passes, the worst case) and one shaped like the demo's
(128 px, 6 classes, 64 FPN channels, anchors 24..384 px) whose class bias ``--demo-cls-bias`` sets how
many candidates pass the threshold. The old loops are ``tests/runtime/post/host_nms_reference.py``;
``--previous`` times a third implementation alongside (another version of ``runtime/post/host_nms.py``,
e.g. ``git show REV:runtime/post/host_nms.py > PREV.py``), and ``--clock thread`` counts this thread's CPU
time instead of wall time (steadier on a shared machine).
Per set it reports the candidates above the threshold and the detections kept (means per image), ms
per image of each implementation (median and minimum of the timed passes) and on how many images both gave
identical outputs, and the same detections (in any order of equal scores).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import time
from pathlib import Path

import numpy as np
from common import random_checkpoint

from retina_deploy.runtime.bench.stats import summarize, time_alternating

REFERENCE = Path(__file__).resolve().parents[1] / "tests/runtime/post/host_nms_reference.py"
DEMO_MODEL = dict(num_classes=6, fpn_channels=64, anchor_sizes=(24, 48, 96, 192, 384), backbone_norm="bn")


def load_implementation(path: Path = REFERENCE):
    """A host NMS module loaded from its file: by default the per-class loops the runtime used before
    (the tests' reference)."""
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def default_models(out: Path, demo_cls_bias: float) -> list[Path]:
    """The two ``--nms none`` files described above (needs torch)."""
    from retina_deploy.export.onnx_export import ExportConfig, export_onnx

    made = []
    for name, size, kwargs in (("r18-256-80cls", 256, {}), ("demo-128", 128, dict(DEMO_MODEL, cls_bias=demo_cls_bias))):
        ckpt = random_checkpoint(out / name, backbone="resnet18", size=(size, size), head_norm="groupnorm", **kwargs)
        made.append(export_onnx(ckpt, out / f"{name}.nms-none.onnx", ExportConfig(nms="none", batch=(1, 1, 4))))
    return made


def dense_outputs(model: Path, num_images: int):
    """(boxes [B, N, 4], scores [B, N, C], the model's NMS settings and level sizes) on synthetic images."""
    from retina_deploy.inference.bench import load_images
    from retina_deploy.runtime.detector import Detector

    images, _ = load_images(None, num_images)
    with Detector.load(model, backend="ort-cpu") as det:
        raws = [det.backend.run(det.prepare(img).chw[None]) for img in images]
        spec = det.spec
    boxes = np.concatenate([r["boxes"] for r in raws]).astype(np.float32)
    scores = np.concatenate([r["scores"] for r in raws]).astype(np.float32)
    return boxes, scores, spec.nms, list(spec.anchors_per_level)


def identical(a: dict, b: dict) -> bool:
    return all(np.array_equal(a[k], b[k]) for k in ("num_dets", "boxes", "scores", "classes"))


def same_detections(a: dict, b: dict) -> bool:
    """The same (class, score, box) detections, in any order (equal scores may be ordered differently)."""

    def rows(d):
        n = d["num_dets"][0, 0]
        boxes = map(tuple, d["boxes"][0, :n].tolist())
        return sorted(zip(d["classes"][0, :n].tolist(), d["scores"][0, :n].tolist(), boxes, strict=True))

    return identical(a, b) or rows(a) == rows(b)


def measure(
    model: Path, num_images: int, thresholds: list[float], iters: int, old, previous=None, clock=None
) -> list[dict]:
    from retina_deploy.runtime.post import host_nms, native

    cpp = native if native.available() else None

    boxes, scores, nms, levels = dense_outputs(model, num_images)
    n, rows = len(boxes), []
    for thresh in thresholds:
        run = dict(level_sizes=levels, topk=nms.topk_per_level, score_thresh=thresh, iou_thresh=nms.iou_thresh,
                   max_dets=nms.max_dets)  # fmt: skip

        def per_image(impl, run=run):
            return [impl.detections_from_dense(boxes[i : i + 1], scores[i : i + 1], **run) for i in range(n)]

        new_out, old_out = per_image(host_nms), per_image(old)
        cands = [int((scores[i][host_nms.topk_per_level(scores[i], levels, nms.topk_per_level)] > thresh).sum())
                 for i in range(n)]  # fmt: skip
        impls = {"old": old, "numpy": host_nms, "cpp": cpp, "previous": previous}
        impls = {name: m for name, m in impls.items() if m is not None}
        timings = time_alternating([lambda sw, m=m: per_image(m) for m in impls.values()], iters, clock=clock)
        t = {name: summarize(timing.total) for name, timing in zip(impls, timings, strict=True)}
        old_t, new_t = t["old"], t["numpy"]

        def ms(seconds: float) -> float:
            return round(seconds / n * 1e3, 3)

        rows.append({
            "model": model.name, "classes": scores.shape[2], "anchors": scores.shape[1], "score_thresh": thresh,
            "topk_per_level": nms.topk_per_level, "max_dets": nms.max_dets, "images": n,
            "candidates_per_image": float(np.mean(cands)),
            "kept_per_image": float(np.mean([o["num_dets"][0, 0] for o in new_out])),
            "old_ms_per_image": ms(old_t.median), "new_ms_per_image": ms(new_t.median),
            "old_min_ms_per_image": ms(old_t.min), "new_min_ms_per_image": ms(new_t.min),
            "speedup": round(old_t.median / new_t.median, 1),
            "identical_images": sum(identical(a, b) for a, b in zip(new_out, old_out, strict=True)),
            "same_detections_images": sum(same_detections(a, b) for a, b in zip(new_out, old_out, strict=True)),
        })  # fmt: skip
        if cpp:
            cpp_out = per_image(cpp)
            rows[-1].update({
                "cpp_ms_per_image": ms(t["cpp"].median), "cpp_min_ms_per_image": ms(t["cpp"].min),
                "cpp_speedup_vs_numpy": round(new_t.median / t["cpp"].median, 1),
                "cpp_identical_images": sum(identical(a, b) for a, b in zip(cpp_out, new_out, strict=True)),
            })  # fmt: skip
        if previous:
            prev_out = per_image(previous)
            rows[-1].update({
                "previous_ms_per_image": ms(t["previous"].median), "previous_min_ms_per_image": ms(t["previous"].min),
                "speedup_vs_previous": round(t["previous"].median / new_t.median, 2),
                "identical_to_previous_images": sum(identical(a, b) for a, b in zip(new_out, prev_out, strict=True)),
            })  # fmt: skip
    return rows


def print_rows(rows: list[dict]) -> None:
    print(f"{'model':<28} {'thresh':>6} {'cands':>6} {'kept':>5} {'old ms (min)':>15} {'new ms (min)':>14} "
          f"{'speedup':>7}  identical / same")  # fmt: skip
    for r in rows:
        print(f"{r['model']:<28} {r['score_thresh']:>6} {r['candidates_per_image']:>6.0f} {r['kept_per_image']:>5.0f} "
              f"{r['old_ms_per_image']:>7.2f} ({r['old_min_ms_per_image']:>6.2f}) {r['new_ms_per_image']:>6.2f} "
              f"({r['new_min_ms_per_image']:>5.2f}) {r['speedup']:>6.1f}x  {r['identical_images']} / "
              f"{r['same_detections_images']} of {r['images']}")  # fmt: skip
        if "cpp_ms_per_image" in r:
            print(f"{'':<28} C++ ms {r['cpp_ms_per_image']:.3f} ({r['cpp_min_ms_per_image']:.3f}), "
                  f"{r['cpp_speedup_vs_numpy']:.1f}x faster than numpy, identical to it on "
                  f"{r['cpp_identical_images']} of {r['images']}")  # fmt: skip
        if "previous_ms_per_image" in r:
            print(f"{'':<28} previous ms {r['previous_ms_per_image']:.2f} ({r['previous_min_ms_per_image']:.2f}), "
                  f"new {r['speedup_vs_previous']:.2f}x faster, identical on {r['identical_to_previous_images']} "
                  f"of {r['images']}")  # fmt: skip


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="folder for the exported default models")
    parser.add_argument("--model", type=Path, nargs="+", help="--nms none .onnx files (default: export two)")
    parser.add_argument("--images", type=int, default=8, help="synthetic images, one candidate set each (default 8)")
    parser.add_argument("--iters", type=int, default=5, help="timed passes over all images per side (default 5)")
    parser.add_argument("--thresholds", type=float, nargs="+", default=[0.05, 0.001], help="score thresholds")
    parser.add_argument("--demo-cls-bias", type=float, default=-3.4,
                        help="class bias of the default demo-shaped model (default -3.4)")  # fmt: skip
    parser.add_argument("--previous", type=Path, help="another host_nms.py, timed alongside (default: none)")
    parser.add_argument("--clock", choices=["wall", "thread"], default="wall",
                        help="wall time, or this thread's CPU time (default wall)")  # fmt: skip
    parser.add_argument("--json", type=Path, help="write the rows here")
    args = parser.parse_args(argv)
    for name in ("images", "iters"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1")
    if args.previous and not args.previous.is_file():
        parser.error(f"--previous {args.previous}: no such file")
    models = args.model or default_models(args.out, args.demo_cls_bias)
    old, previous = load_implementation(), args.previous and load_implementation(args.previous)
    clock = time.thread_time if args.clock == "thread" else time.perf_counter
    rows = [row for model in models
            for row in measure(model, args.images, args.thresholds, args.iters, old, previous, clock)]  # fmt: skip
    print_rows(rows)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
    return rows


if __name__ == "__main__":
    main()
