"""``predict``: detections of image files by any model, as ``detections.json`` and annotated PNGs.

``predict_files(detector, ...)`` takes the ``Detector`` that ``open_model`` gives for a checkpoint,
an ONNX file, an engine or a Triton model: one code path for every kind of model.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from retina_deploy.core.argcheck import int_at_least

DEFAULT_DRAW_THRESH = 0.3  # boxes drawn on annotated images; `eval` prints the model's best-F1 threshold
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
    detector,
    image_paths: Sequence[str | os.PathLike],
    out_dir: str | os.PathLike,
    *,
    batch_size: int = 8,
    draw_score_thresh: float = DEFAULT_DRAW_THRESH,
    progress: bool = False,
    overwrite: bool = False,
) -> tuple[list[dict], list[str]]:
    """``detector`` (a runtime ``Detector``) on image files: write ``out_dir/detections.json`` and one
    annotated PNG per image.

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
    batch_size = int_at_least("batch size", batch_size, 1)
    pairs = list(zip(image_paths, png_names, strict=True))
    chunks = [pairs[i : i + batch_size] for i in range(0, len(pairs), batch_size)]
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
        done = iter(zip(loaded, detector.detect([img for _, _, img in loaded]), strict=True))
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
