"""Checks of what a backend returned, before any of it becomes a ``Detections`` (torch-free).

A backend is a file run locally (an FP16 overflow gives NaN or inf) or a server (Triton may answer
short, misshapen or wrong arrays). Every check here is a few vectorised numpy reductions over the
[B, K] detection outputs (or the dense [B, N, C] scores), so it costs microseconds to a few
milliseconds next to inference. A violation is a ``ModelOutputError`` naming the backend and the model.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from retina_deploy.core.errors import ModelOutputError
from retina_deploy.runtime.contract.onnx_metadata import DETECTION_OUTPUTS

_NDIMS = {"num_dets": 2, "boxes": 3, "scores": 2, "classes": 2}


def output_array(raw: Mapping[str, np.ndarray], name: str, ndim: int, rows: int, where: str) -> np.ndarray:
    """Output ``name`` as an array of ``ndim`` dims with ``rows`` rows (one per image sent)."""
    if name not in raw:
        raise ModelOutputError(f"{where}: no output {name!r} (outputs: {sorted(raw)})")
    value = np.asarray(raw[name])
    if value.ndim != ndim or value.shape[0] != rows:
        raise ModelOutputError(
            f"{where}: output {name!r} has shape {list(value.shape)}, expected {ndim} dims with {rows} rows "
            "(one per image sent)"
        )
    if value.dtype.kind not in "iuf":
        raise ModelOutputError(f"{where}: output {name!r} has dtype {value.dtype}, expected numbers")
    return value


def check_dense(boxes: np.ndarray, scores: np.ndarray, num_classes: int, where: str) -> None:
    """Dense outputs of a ``--nms none`` model: boxes [B, N, 4] finite, scores [B, N, C] in [0, 1]."""
    if boxes.shape[2:] != (4,) or boxes.shape[:2] != scores.shape[:2] or scores.shape[2] != num_classes:
        raise ModelOutputError(
            f"{where}: dense outputs boxes {list(boxes.shape)} / scores {list(scores.shape)} do not match "
            f"[B, N, 4] / [B, N, {num_classes}]"
        )
    if scores.size and not (scores.min() >= 0 and scores.max() <= 1):  # NaN fails both comparisons
        raise ModelOutputError(f"{where}: dense scores outside [0, 1] (or NaN): min {scores.min()}, max {scores.max()}")
    if not np.isfinite(boxes).all():
        raise ModelOutputError(f"{where}: dense boxes hold NaN or infinite values")


def check_detections(out: Mapping[str, np.ndarray], num_classes: int, where: str) -> dict[str, np.ndarray]:
    """The four detection outputs checked, with ``num_dets`` as int64 [B, 1].

    Expects num_dets [B, 1] integers in [0, K], boxes [B, K, 4], scores [B, K], classes [B, K]; of
    each image's first num_dets entries: boxes finite, scores in (0, 1] and descending, classes in
    0..C-1 (entries past num_dets are padding and not looked at).
    """
    n, boxes, scores, classes = (out[name] for name in DETECTION_OUTPUTS)
    b, k = scores.shape
    if n.shape != (b, 1) or boxes.shape != (b, k, 4) or classes.shape != (b, k):
        shapes = ", ".join(f"{name} {list(out[name].shape)}" for name in DETECTION_OUTPUTS)
        raise ModelOutputError(f"{where}: outputs {shapes} do not match [B, 1], [B, K, 4], [B, K], [B, K]")
    if n.dtype.kind == "f" and not (np.isfinite(n).all() and (n == np.round(n)).all()):
        raise ModelOutputError(f"{where}: num_dets holds non-integer values {n[:, 0].tolist()}")
    n = n.astype(np.int64)
    if n.min() < 0 or n.max() > k:
        raise ModelOutputError(f"{where}: num_dets {n[:, 0].tolist()} outside [0, {k}]")
    valid = np.arange(k)[None, :] < n  # [B, K]
    s = scores[valid]
    if s.size and not (s.min() > 0 and s.max() <= 1):
        raise ModelOutputError(f"{where}: scores outside (0, 1] (or NaN): min {s.min()}, max {s.max()}")
    if k > 1 and (np.diff(scores, axis=1) > 0)[valid[:, 1:]].any():
        raise ModelOutputError(f"{where}: scores are not in descending order")
    if not np.isfinite(boxes[valid]).all():
        raise ModelOutputError(f"{where}: boxes hold NaN or infinite values")
    c = classes[valid]
    if c.size and (c.min() < 0 or c.max() >= num_classes or (c.dtype.kind == "f" and (c != np.round(c)).any())):
        raise ModelOutputError(f"{where}: class ids outside 0..{num_classes - 1}: {np.unique(c)[:10].tolist()}")
    return {"num_dets": n, "boxes": boxes, "scores": scores, "classes": classes}


def detection_arrays(raw: Mapping[str, np.ndarray], rows: int, where: str) -> dict[str, np.ndarray]:
    """The four detection outputs of ``raw``, each checked for dims and ``rows`` rows."""
    return {name: output_array(raw, name, _NDIMS[name], rows, where) for name in DETECTION_OUTPUTS}
