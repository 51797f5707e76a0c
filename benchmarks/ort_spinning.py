"""ONNX Runtime's worker threads spinning or sleeping between runs: ``bench``'s phases for each setting, alternated.

While they wait for work, ONNX Runtime's intra-op threads spin by default, and the runtime keeps that
(``runtime/backends/ort.py``). This script opens each file twice, once with the runtime's session and once with
one whose threads sleep (``session.intra_op.allow_spinning`` = 0), and times both with ``bench``'s own step
(``DetectorTarget``: preprocess, compute, post) in alternating rounds, so that load drift hits both alike.

    python benchmarks/ort_spinning.py DEMO/model.nms-none.onnx DEMO/model.onnx --images DEMO/data/val/images
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import onnxruntime as ort

from retina_deploy.inference.bench import load_images
from retina_deploy.inference.open import open_model
from retina_deploy.runtime.bench.envinfo import machine_load
from retina_deploy.runtime.bench.run import DetectorTarget, RunLength, measure


def _sleeping(detector, threads: int) -> None:
    """Replace the detector's ONNX Runtime session with one whose threads sleep instead of spinning."""
    model = detector.backend.model
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    model.session = ort.InferenceSession(model.path.read_bytes(), options, providers=["CPUExecutionProvider"])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("models", type=Path, nargs="+", help=".onnx files")
    p.add_argument("--images", type=Path, help="images folder (default: synthetic)")
    p.add_argument("--batch", type=int, nargs="+", default=[1, 4])
    p.add_argument("--rounds", type=int, default=3, help="alternations of the two settings")
    p.add_argument("--duration-s", type=float, default=3.0)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    images, desc = load_images(args.images, 16)
    print(f"images: {desc}; load before: {machine_load()}")
    length = RunLength(warmup_s=1.0, duration_s=args.duration_s)
    print("| file | batch | setting | compute ms (median of rounds) | post ms | post / compute |")
    print("|---|---|---|---|---|---|")
    for path in args.models:
        targets = {}
        for setting in ("spin (default, the runtime)", "sleep (allow_spinning 0)"):
            det = open_model(path, backend="ort-cpu", num_threads=args.threads)
            if setting.startswith("sleep"):
                _sleeping(det, args.threads)
            targets[setting] = DetectorTarget(det, label=path.name, kind="onnx")
        for batch in args.batch:
            rows = {s: ([], []) for s in targets}
            for _ in range(args.rounds):
                for setting, target in targets.items():
                    record = measure(target, batch, images, length)
                    rows[setting][0].append(record["compute_ms"]["mean"] / batch)
                    rows[setting][1].append(record["phases_ms"]["postprocess"] / batch)
            for setting, (compute, post) in rows.items():
                c, q = statistics.median(compute), statistics.median(post)
                print(f"| {path.name} | {batch} | {setting} | {c:.2f} | {q:.2f} | {q / c:.0%} |")
        for target in targets.values():
            target.close()
    print(f"load after: {machine_load()}")


if __name__ == "__main__":
    main()
