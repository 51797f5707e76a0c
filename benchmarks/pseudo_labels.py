"""A COCO file whose ground truth is a reference model's own detections: accuracy of other precisions relative to it.

    python benchmarks/pseudo_labels.py model.onnx IMAGES_DIR OUT.json [--min-score 0.5] [--num 100]
    retina-deploy eval model.int8.onnx --images IMAGES_DIR --annotations OUT.json

The reference (usually the FP32 file) then scores AP ~1.0 by construction, and the AP another file loses is its own
error against the reference: the INT8 / FP16 fidelity of a model without a trained checkpoint or a labelled set.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from retina_deploy.runtime.detector import Detector
from retina_deploy.runtime.image.image_io import load_image


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", type=Path, help="the reference .onnx file")
    p.add_argument("images", type=Path, help="folder of PNG/JPEG images")
    p.add_argument("out", type=Path, help="COCO instances JSON to write")
    p.add_argument("--min-score", type=float, default=0.5, help="reference detections kept as ground truth")
    p.add_argument("--num", type=int, default=100, help="images used (sorted by name)")
    args = p.parse_args()
    files = sorted(f for f in args.images.iterdir() if f.suffix.lower() in (".png", ".jpg", ".jpeg"))[: args.num]
    images, annotations = [], []
    with Detector.load(args.model, backend="ort-cpu") as det:
        for image_id, path in enumerate(files, start=1):
            rgb = load_image(path)
            images.append({"id": image_id, "file_name": path.name, "height": rgb.shape[0], "width": rgb.shape[1]})
            found = det.detect_one(rgb)
            for box, score, cls in zip(found.boxes, found.scores, found.class_ids, strict=True):
                if score < args.min_score:
                    continue
                x0, y0, x1, y1 = (float(v) for v in box)
                annotations.append(
                    {"id": len(annotations) + 1, "image_id": image_id, "category_id": int(cls) + 1,
                     "bbox": [x0, y0, x1 - x0, y1 - y0], "area": (x1 - x0) * (y1 - y0), "iscrowd": 0}
                )  # fmt: skip
        categories = [{"id": i + 1, "name": name} for i, name in enumerate(det.class_names)]
    args.out.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    print(f"{len(images)} images, {len(annotations)} reference detections >= {args.min_score} -> {args.out}")


if __name__ == "__main__":
    main()
