"""OpenVINO against ONNX Runtime on the same files, interleaved: ratios that load drift hits alike.

At each batch size, every file runs ``bench``'s own step (``DetectorTarget``: preprocess, backend,
post-processing) in ONNX Runtime and in OpenVINO, all in turns (``time_alternating``): a shared CPU slows
them all alike, so the ratios hold where the absolute times do not.

    python benchmarks/openvino_vs_ort.py DIR/model.onnx DIR/model.fp16.onnx DIR/model.int8.onnx \
        DIR/model.int8-cpu.onnx DIR/model.nms-none.onnx --batch 1 4 --threads 2 --iters 20 [--json out.json]

The files: ``benchmarks/precision_files.py`` (the demo's: ``--backbone resnet18 --size 128 --num-classes 3
--head-norm groupnorm --batch 1 4 8 --nms-none``). Ratios are against ONNX Runtime on the first file (FP32).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from retina_deploy.inference.bench import load_images
from retina_deploy.inference.open import open_model
from retina_deploy.runtime.bench.run import DetectorTarget, batches_of
from retina_deploy.runtime.bench.stats import summarize, time_alternating

BACKENDS = ("ort-cpu", "openvino")


def measure(paths: list[Path], batch: int, images, threads: int, iters: int) -> list[dict]:
    """One record per file: {"model", "batch", backend: {"total_ms", "compute_ms"}}, medians of ``iters``
    steps; every (file, backend) takes its turn in each round, so all ratios share the load."""
    targets = [
        DetectorTarget(open_model(p, backend=b, num_threads=threads), label=p.name, kind="onnx")
        for p in paths
        for b in BACKENDS
    ]
    try:
        sources = [batches_of(images, batch) for _ in targets]
        steps = [lambda sw, t=t, s=s: t.step(s(), sw) for t, s in zip(targets, sources, strict=True)]
        timings = time_alternating(steps, iters, warmup=3)
    finally:
        for t in targets:
            t.close()
    medians = [
        {"total_ms": summarize(t.total).median * 1e3, "compute_ms": summarize(t.phases["compute"]).median * 1e3}
        for t in timings
    ]
    n = len(BACKENDS)
    return [
        {"model": p.name, "batch": batch, **dict(zip(BACKENDS, medians[i * n : (i + 1) * n], strict=True))}
        for i, p in enumerate(paths)
    ]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("models", type=Path, nargs="+", help=".onnx files; the first is the FP32 reference")
    p.add_argument("--batch", type=int, nargs="+", default=[1, 4])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--iters", type=int, default=20, help="timed steps per backend, file and batch")
    p.add_argument("--images", type=Path, help="folder of images (default: synthetic)")
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    images, _ = load_images(args.images, 8)
    rows = []
    for batch in args.batch:
        rows += measure(args.models, batch, images, args.threads, args.iters)
        print(json.dumps(rows[-len(args.models) :]), flush=True)
    ref = {r["batch"]: r["ort-cpu"]["compute_ms"] for r in rows if r["model"] == args.models[0].name}
    print("\n| file | batch | ORT compute ms | OpenVINO compute ms | OpenVINO / ORT, same file | "
          "ORT vs FP32 ORT | OpenVINO vs FP32 ORT |")  # fmt: skip
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        o, v = r["ort-cpu"]["compute_ms"], r["openvino"]["compute_ms"]
        b = r["batch"]
        ratios = f"{o / v:.2f}x faster | {ref[b] / o:.2f}x | {ref[b] / v:.2f}x"
        print(f"| {r['model']} | {b} | {o:.1f} | {v:.1f} | {ratios} |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
