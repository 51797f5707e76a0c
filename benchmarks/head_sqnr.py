"""Signal-to-quantization-noise ratio of reduced-precision files at the head's last convolutions, against FP32.

    python benchmarks/head_sqnr.py DIR/model.onnx DIR/model.fp16.onnx DIR/model.int8.onnx DIR/model.int8-cpu.onnx \
        --images VAL/images [--num 8]

The first file is the FP32 reference. The outputs of the classification and regression convolutions (``cls_logits``,
``bbox_reg``, every level) are compared on the same preprocessed images: SQNR = 10 log10(sum ref^2 / sum (ref -
x)^2) in dB. Two files with equal SQNR there lose the same accuracy; a model-free check that needs no labels.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from retina_deploy.runtime.contract.onnx_metadata import OnnxMetadata
from retina_deploy.runtime.image.image_io import load_image
from retina_deploy.runtime.image.preprocess import preprocess


def head_outputs(path: Path, names: list[str], images: np.ndarray) -> dict[str, np.ndarray]:
    model = onnx.load(str(path))
    for name in names:
        model.graph.output.append(onnx.helper.make_empty_tensor_value_info(name))
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return dict(zip(names, session.run(names, {"images": images}), strict=True))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("files", type=Path, nargs="+", help="the FP32 reference first, then the files to compare")
    p.add_argument("--images", type=Path, required=True)
    p.add_argument("--num", type=int, default=8)
    args = p.parse_args()
    reference = onnx.load(str(args.files[0]))
    meta = OnnxMetadata.from_props({q.key: q.value for q in reference.metadata_props}, str(args.files[0]))
    names = [
        n.output[0]
        for n in reference.graph.node
        if n.op_type == "Conv" and ("cls_logits" in n.name or "bbox_reg" in n.name)
    ]
    files = sorted(f for f in args.images.iterdir() if f.suffix.lower() in (".png", ".jpg", ".jpeg"))[: args.num]
    images = np.stack([preprocess(load_image(f), meta.preprocess)[0] for f in files])
    ref = head_outputs(args.files[0], names, images)
    signal = sum(float((ref[n].astype(np.float64) ** 2).sum()) for n in names)
    for path in args.files[1:]:
        got = head_outputs(path, names, images)
        noise = sum(float(((ref[n].astype(np.float64) - got[n]) ** 2).sum()) for n in names)
        print(
            f"{path.name:24s} SQNR {10 * np.log10(signal / noise):6.2f} dB "
            f"({len(names)} head outputs, {len(files)} images)"
        )


if __name__ == "__main__":
    main()
