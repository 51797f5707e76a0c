"""Run any model file on images: checkpoints here (PyTorch), ``.onnx`` / ``.engine`` through the runtime.

``load_predictor(path)`` picks the backend from the path; ``predict_files`` and
``evaluate_predictor`` then work the same for every kind of model file (one code path).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import numpy as np

from retina_deploy.core.errors import DatasetError
from retina_deploy.runtime.backends import backend_for_device, gpu_index
from retina_deploy.runtime.image.preprocess import PreprocessConfig, preprocess
from retina_deploy.runtime.post.detections import Detections, make_detections

DEFAULT_DRAW_THRESH = 0.3  # boxes drawn on annotated images; `eval` prints the model's best-F1 threshold


class Predictor(Protocol):
    """Anything that turns RGB uint8 images [h, w, 3] into Detections in original pixels."""

    class_names: tuple[str, ...]
    preprocess_cfg: PreprocessConfig

    def predict(self, images: Sequence[np.ndarray]) -> list[Detections]: ...


class TorchPredictor:
    """A RetinaNet (from a checkpoint or in memory) behind the Predictor interface."""

    def __init__(self, model, class_names: Sequence[str], preprocess_cfg: PreprocessConfig, device: str = "cpu"):
        self.model = model.to(device).eval()
        self.class_names = tuple(class_names)
        self.preprocess_cfg = preprocess_cfg
        self.device = device

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike, device: str = "cpu") -> TorchPredictor:
        import torch

        from retina_deploy.core.errors import ConfigError
        from retina_deploy.model.checkpoint import load_checkpoint

        gpu = gpu_index(device)
        if gpu is not None and not (torch.cuda.is_available() and gpu < torch.cuda.device_count()):
            raise ConfigError(f"device {device!r}: no such CUDA device here (checkpoints run on cpu or a CUDA GPU)")
        model, info = load_checkpoint(path, map_location=device)
        return cls(model, info.class_names, info.preprocess, device)

    def predict(self, images: Sequence[np.ndarray]) -> list[Detections]:
        import torch

        if not images:
            return []
        inputs, scales = zip(*(preprocess(img, self.preprocess_cfg) for img in images), strict=True)
        with torch.no_grad():
            outputs = self.model(torch.from_numpy(np.stack(inputs)).to(self.device))
        return [
            make_detections(
                out["boxes"].cpu().numpy(),
                out["scores"].cpu().numpy(),
                out["labels"].cpu().numpy(),
                self.class_names,
                scale=scale,
                orig_hw=img.shape[:2],
            )
            for out, scale, img in zip(outputs, scales, images, strict=True)
        ]


def load_predictor(path: str | os.PathLike, *, device: str = "cpu", backend: str = "auto") -> Predictor:
    """A Predictor for any model file: checkpoints run in PyTorch, ``.onnx`` / ``.engine`` and ``triton://host:port/model``
    URLs in the runtime's Detector.

    device: "cpu", "cuda" or "cuda:N". ONNX files run in ONNX Runtime with the CPU provider for "cpu"
        and the CUDA provider for "cuda[:N]"; engines always run on a GPU (N, default 0).
    backend: for ``.onnx`` / ``.engine`` files, a ``Detector.load`` backend name overriding the choice
        made from ``device`` (e.g. "ort-tensorrt", "tensorrt-rtx").
    """
    gpu = gpu_index(device)
    from retina_deploy.core.artifacts import model_kind
    from retina_deploy.runtime.detector import Detector

    if str(path).startswith("triton://"):  # a model served by Triton (``triton-repo``)
        return Detector.load(str(path), backend=backend)
    kind = model_kind(path)
    if kind == "checkpoint":
        return TorchPredictor.from_checkpoint(path, device)
    return Detector.load(path, backend=backend_for_device(path, backend, gpu), device=gpu or 0)


def _batches(items: Sequence, size: int):
    from retina_deploy.core.errors import ConfigError

    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ConfigError(f"batch size must be an integer >= 1, got {size!r}")
    for start in range(0, len(items), size):
        yield items[start : start + size]


def evaluate_predictor(predictor: Predictor, coco, *, batch_size: int = 8, progress: bool = False):
    """COCO metrics of ``predictor`` on a ``CocoDataset``; returns (metrics, COCO results records).

    Images are read with the runtime's loader and predicted in original coordinates, so every
    backend is scored by the same code.
    """
    from retina_deploy.evaluation.metrics import coco_evaluate, to_coco_results

    if tuple(predictor.class_names) != tuple(coco.class_names):
        raise DatasetError(
            f"the model's classes {list(predictor.class_names)[:6]} differ from those of {coco.annotations_path}"
            f" {coco.class_names[:6]}"
        )
    detections, image_ids = [], []
    records = coco.records
    bar = _progress(len(records), "eval", progress)
    for chunk in _batches(records, batch_size):
        detections.extend(predictor.predict([coco.load_image(r) for r in chunk]))
        image_ids.extend(r.image_id for r in chunk)
        bar.update(len(chunk))
    bar.close()
    results = to_coco_results(detections, image_ids, coco.label_to_category_id)
    return coco_evaluate(coco.annotations_path, results), results


COMMAND = "predict"  # the marker of its output folders, listing the files predict wrote there
DETECTIONS = "detections.json"


def check_draw_thresh(value: float) -> float:
    """``value`` as a float when it is a number in [0, 1]; ConfigError otherwise (NaN and inf included)."""
    from retina_deploy.core.errors import ConfigError

    try:
        thresh = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"--draw-thresh must be a number in [0, 1], got {value!r}") from None
    if not 0.0 <= thresh <= 1.0:  # also False for NaN
        raise ConfigError(f"--draw-thresh must be a number in [0, 1], got {value!r}")
    return thresh


def check_predict_out(
    out_dir: str | os.PathLike,
    image_paths: Sequence[str | os.PathLike],
    *,
    inputs: Sequence[str | os.PathLike] = (),
    overwrite: bool = False,
) -> list[str]:
    """Check ``out_dir`` before any work; returns the annotated PNGs' names, one per image.

    ``out_dir`` must be absent, empty, a previous predict's folder (its marker) or, with
    ``overwrite``, any folder; it holds none of ``image_paths`` or ``inputs`` (the model); a file it
    would write (``detections.json``, a PNG) may exist only if an earlier predict wrote it there.
    ConfigError otherwise.
    """
    from retina_deploy.core.outputs import check_output_dir, check_replaceable

    out_dir = Path(out_dir)
    check_output_dir(out_dir, inputs=(*image_paths, *inputs), command=COMMAND, reuse=True, foreign_ok=overwrite)
    used: set[str] = set()
    names = [_unique_png_name(Path(p), used) for p in image_paths]
    check_replaceable(out_dir, [*names, DETECTIONS], COMMAND)
    return names


def predict_files(
    predictor: Predictor,
    image_paths: Sequence[str | os.PathLike],
    out_dir: str | os.PathLike,
    *,
    batch_size: int = 8,
    draw_score_thresh: float = DEFAULT_DRAW_THRESH,
    progress: bool = False,
    overwrite: bool = False,
) -> tuple[list[dict], list[str]]:
    """Predict on image files; write ``out_dir/detections.json`` and one annotated PNG per image.

    An unreadable image does not stop the others: it is recorded with its error, in input order.
    ``out_dir`` is checked by ``check_predict_out`` first; ``draw_score_thresh`` is in [0, 1]. Returns
    (records as written to the JSON, error lines).
    """
    from retina_deploy.core.errors import ImageError
    from retina_deploy.core.fileio import write_json_atomic
    from retina_deploy.core.outputs import mark_folder, marked_files
    from retina_deploy.runtime.image.image_io import load_image
    from retina_deploy.runtime.image.visualize import draw_detections, save_image_atomic

    draw_score_thresh = check_draw_thresh(draw_score_thresh)
    png_names = check_predict_out(out_dir, image_paths, overwrite=overwrite)
    chunks = list(_batches(list(zip(image_paths, png_names, strict=True)), batch_size))
    out_dir = Path(out_dir)
    mark_folder(out_dir, COMMAND, files={*marked_files(out_dir, COMMAND), *png_names, DETECTIONS})
    records, errors = [], []
    bar = _progress(len(image_paths), "predict", progress)
    for chunk in chunks:
        slots, loaded = [], []
        for path, png_name in chunk:
            try:
                loaded.append((Path(path), png_name, load_image(path)))
                slots.append(None)
            except ImageError as e:
                slots.append({"image": str(path), "error": str(e)})
                errors.append(str(e))
        done = iter(zip(loaded, predictor.predict([img for _, _, img in loaded]), strict=True))
        for slot in slots:
            if slot is not None:
                records.append(slot)
                continue
            (path, png_name, image), dets = next(done)
            drawn = draw_detections(image, dets.boxes, dets.scores, dets.class_names, score_thresh=draw_score_thresh)
            save_image_atomic(drawn, out_dir / png_name)
            records.append({"image": str(path), "height": image.shape[0], "width": image.shape[1], **dets.to_dict()})
        bar.update(len(chunk))
    bar.close()
    write_json_atomic(out_dir / DETECTIONS, records)
    return records, errors


def _unique_png_name(image_path: Path, used: set[str]) -> str:
    """``<stem>.png``, suffixed when two inputs share a stem (a/x.jpg, b/x.jpg)."""
    name, n = f"{image_path.stem}.png", 1
    while name in used:
        name, n = f"{image_path.stem}_{n}.png", n + 1
    used.add(name)
    return name


def _progress(total: int, desc: str, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit="img", disable=not enabled, leave=False)
