"""ONNX Runtime latency of an exported graph against PyTorch eager, same checkpoint, ratio in one run.

Both sides include post-processing: PyTorch ``model(images)`` (eval: threshold, top-k, decode, NMS)
against ``OnnxModel.run`` on the exported file, on the same preprocessed batch, timed alternately
so that load drift hits both alike. Also prints the export time and node count of the file.

    python benchmarks/bench_onnx_vs_torch.py [--checkpoint CKPT] [--backbone resnet18] [--size 512 512]
        [--nms onnx] [--batch 1] [--threads 2] [--iters 10] [--json out.json]

Without ``--checkpoint`` a random-weight RetinaNet of ``--backbone`` is built (80 classes; the
classifier is set so that the post-processing sees a realistic number of candidates).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import torch
from common import paired_medians, random_checkpoint


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, default=None, help="default: a random-weight model")
    parser.add_argument("--backbone", default="resnet18", help="for the random-weight model (default resnet18)")
    parser.add_argument("--size", type=int, nargs=2, default=(512, 512), metavar=("H", "W"))
    parser.add_argument("--nms", default="onnx", choices=("onnx", "none"), help="graph variant (default onnx)")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2, help="for both PyTorch and ONNX Runtime (default 2)")
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args()

    from retina_deploy.export.onnx_export import ExportConfig, export_onnx
    from retina_deploy.model.checkpoint import load_checkpoint
    from retina_deploy.runtime.backends.ort import OnnxModel

    torch.set_num_threads(args.threads)
    size = tuple(args.size)
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = args.checkpoint or random_checkpoint(Path(tmp), backbone=args.backbone, size=size)
        t0 = time.perf_counter()
        cfg = ExportConfig(size=size, nms=args.nms, batch=(1, args.batch, max(args.batch, 1)))
        path = export_onnx(ckpt, Path(tmp) / "model.onnx", cfg)
        export_s = time.perf_counter() - t0
        nodes = len(onnx.load(path).graph.node)
        model, info = load_checkpoint(ckpt)
        runner = OnnxModel.load(path, threads=args.threads)
        images = np.random.default_rng(0).standard_normal((args.batch, 3, *size)).astype(np.float32)
        batch = torch.from_numpy(images)

        def eager():
            with torch.no_grad():
                model(batch)

        torch_s, ort_s = paired_medians(eager, lambda: runner.run(images), args.iters)
    result = {
        "backbone": info.model.backbone,
        "size": list(size),
        "batch": args.batch,
        "nms": args.nms,
        "threads": args.threads,
        "export_s": round(export_s, 2),
        "nodes": nodes,
        "torch_eager_s": round(torch_s, 4),
        "onnxruntime_s": round(ort_s, 4),
        "ort_over_torch": round(ort_s / torch_s, 3),
    }
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
