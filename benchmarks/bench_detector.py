"""Runtime overhead and dynamic-batching throughput, ratios measured in one run.

1. ``Detector.detect`` end-to-end (validate, preprocess, run, NMS output decoding, mapping boxes back
   to the original image) against a bare ``session.run`` on already preprocessed input, batch 1
   and the model's maximum batch: the Detector's overhead (goal <= 10%).
2. ``BatchingDetector`` with N concurrent client threads calling ``detect_one`` against one thread
   calling ``detect([image])`` in a loop: throughput ratio.

    python benchmarks/bench_detector.py [--model M.onnx] [--iters 10] [--clients 8] [--json out.json]

Without ``--model`` a ResNet-18 RetinaNet (random weights, 256 x 256, batch 1..4) is exported
first (needs torch; the measurement itself is torch-free).
"""

from __future__ import annotations

import argparse
import json
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from common import paired_medians, random_checkpoint


def make_model(out_dir: Path, nms: str, size: int) -> Path:
    """Export a random-weight ResNet-18 RetinaNet (needs torch)."""
    from retina_deploy.export.onnx_export import ExportConfig, export_onnx

    ckpt = random_checkpoint(out_dir, backbone="resnet18", size=(size, size), head_norm="groupnorm")
    return export_onnx(ckpt, out_dir / f"model_{nms}.onnx", ExportConfig(nms=nms, batch=(1, 2, 4)))


def bench_overhead(detector, images: list[np.ndarray], iters: int) -> dict:
    """Detector.detect on original images vs bare session.run on the same batch, preprocessed beforehand."""
    session = detector.backend.model.session
    out = {}
    for batch in sorted({1, detector.max_batch}):
        imgs = images[:batch]
        pre = np.stack([detector.prepare(img).chw for img in imgs])
        bare, full = paired_medians(
            lambda pre=pre: session.run(None, {"images": pre}), lambda imgs=imgs: detector.detect(imgs), iters
        )
        out[f"batch{batch}"] = {
            "bare_session_run_ms": round(bare * 1e3, 2),
            "detector_detect_ms": round(full * 1e3, 2),
            "overhead_pct": round((full / bare - 1) * 100, 1),
        }
    return out


def bench_batching(detector, images: list[np.ndarray], clients: int, per_client: int, rounds: int, delay_ms: float):
    """Images/s of N client threads through a BatchingDetector vs one thread calling detect([image]).

    Rounds alternate between the two so that load drift hits both alike; medians are reported.
    """
    from retina_deploy.runtime.batching import BatchingDetector

    total = clients * per_client
    work = [images[i % len(images)] for i in range(total)]

    def sequential():
        for img in work:
            detector.detect([img])

    with BatchingDetector(detector, max_delay_ms=delay_ms, max_queue=4 * total) as batcher:

        def client(k):
            return [batcher.detect_one(work[k * per_client + j], timeout_s=None) for j in range(per_client)]

        def batched():
            with ThreadPoolExecutor(clients) as pool:
                list(pool.map(client, range(clients)))

        batcher.detect_one(work[0])  # warm-up
        seq_s, batch_s = paired_medians(sequential, batched, rounds, warmup=0)
        mean_batch = batcher.images_run / max(1, batcher.batches_run)
    return {
        "images_per_round": total,
        "clients": clients,
        "rounds": rounds,
        "sequential_img_per_s": round(total / seq_s, 2),
        "batching_img_per_s": round(total / batch_s, 2),
        "throughput_ratio": round(seq_s / batch_s, 2),
        "mean_batch_size": round(mean_batch, 2),
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, help="an exported .onnx file (default: export a ResNet-18)")
    parser.add_argument("--nms", default="onnx", choices=["onnx", "none"], help="NMS mode of the default model")
    parser.add_argument("--size", type=int, default=256, help="input size of the default model")
    parser.add_argument("--backend", default="ort-cpu", help="Detector backend (default ort-cpu)")
    parser.add_argument("--iters", type=int, default=10, help="timed iterations per overhead measurement")
    parser.add_argument("--clients", type=int, default=8, help="concurrent client threads")
    parser.add_argument("--per-client", type=int, default=2, help="requests per client per round")
    parser.add_argument("--rounds", type=int, default=3, help="alternating sequential / batched rounds")
    parser.add_argument("--threads", type=int, help="ONNX Runtime intra-op threads (default: its choice)")
    parser.add_argument("--max-delay-ms", type=float, default=5.0, help="BatchingDetector max_delay_ms")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)

    from retina_deploy.runtime.detector import Detector

    model = args.model or make_model(Path(tempfile.mkdtemp(prefix="bench-detector-")), args.nms, args.size)
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, size=(480, 640, 3), dtype=np.uint8) for _ in range(4)]
    with Detector.load(model, backend=args.backend, num_threads=args.threads) as detector:
        results = {
            "model": str(model),
            "backend": detector.backend.name,
            "nms": detector.spec.nms.mode,
            "image_hw": [480, 640],
            "input_hw": list(detector.preprocess_cfg.size),
            "overhead": bench_overhead(detector, images, args.iters),
            "batching": bench_batching(detector, images, args.clients, args.per_client, args.rounds, args.max_delay_ms),
        }
    print(json.dumps(results, indent=2))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return results


if __name__ == "__main__":
    main()
