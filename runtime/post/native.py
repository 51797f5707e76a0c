"""The C++ library's host post-processing (``runtime/cpp/src/postprocess.cpp``) for ``--nms none`` files, and the
choice between it and the numpy implementation (``host_nms``).

The C++ code is built with the package as the extension ``_native`` (``setup.py``; optional: an install without a
C++17 compiler goes on without it). Both give the same detections, bit for bit: the same float32 operations in the
same order (the extension is compiled without fused multiply-add), the same order for equal scores
(tests/runtime/post/test_host_post_cpp.py). The C++ one costs a few microseconds where numpy's many small calls
cost about a millisecond per image.

``RETINA_DEPLOY_HOST_POST`` picks one for the process: ``auto`` (the default: C++ when built, else numpy),
``cpp`` (an error when it is not built) or ``numpy``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import NamedTuple

import numpy as np

from retina_deploy.core.errors import ConfigError
from retina_deploy.runtime.post import host_nms

try:
    from retina_deploy.runtime.post import _native
except ImportError:  # not built (no compiler at install time) or built for another Python
    _native = None

HOST_POST_ENV = "RETINA_DEPLOY_HOST_POST"
HOST_POST_CHOICES = ("auto", "cpp", "numpy")


def available() -> bool:
    """Whether the C++ extension is built and importable."""
    return _native is not None


def detections_from_dense(
    boxes: np.ndarray,
    scores: np.ndarray,
    *,
    level_sizes: Sequence[int],
    topk: int,
    score_thresh: float,
    iou_thresh: float,
    max_dets: int,
) -> dict[str, np.ndarray]:
    """``host_nms.detections_from_dense`` in C++: decoded boxes [B, N, 4] and sigmoid scores [B, N, C] to
    num_dets [B, 1] int32, boxes [B, K, 4] float32, scores [B, K] float32, classes [B, K] int32."""
    native = _require()
    if boxes.ndim != 3 or scores.ndim != 3 or boxes.shape[2] != 4 or boxes.shape[:2] != scores.shape[:2]:
        raise ValueError(f"dense outputs boxes {list(boxes.shape)} / scores {list(scores.shape)} are not "
                         "[B, N, 4] / [B, N, C]")  # fmt: skip
    b, n, c = scores.shape
    levels = np.asarray(level_sizes, np.int64)
    if int(levels.sum()) != n:
        raise ValueError(f"level sizes {levels.tolist()} sum to {int(levels.sum())}, the scores have {n} anchors")
    out = host_nms.empty_detections(b, max_dets)
    native.detections_from_dense(
        np.ascontiguousarray(boxes, np.float32),
        np.ascontiguousarray(scores, np.float32),
        levels,
        b,
        n,
        c,
        int(topk),
        float(score_thresh),
        float(iou_thresh),
        int(max_dets),
        *out.values(),
    )
    return out


def batched_nms(
    boxes: np.ndarray, scores: np.ndarray, classes: np.ndarray, iou_thresh: float, max_keep: int
) -> np.ndarray:
    """``host_nms.batched_nms`` in C++: indices kept by class-aware greedy NMS of boxes [M, 4] / scores [M] /
    classes [M] int, by descending score (equal scores by index), at most max_keep."""
    native = _require()
    classes = np.asarray(classes)
    if classes.size and (classes.min() < np.iinfo(np.int32).min or classes.max() > np.iinfo(np.int32).max):
        classes = np.unique(classes, return_inverse=True)[1]  # only equality matters: any int64 ids fit
    kept = np.zeros(len(scores), np.int64)
    count = native.batched_nms(
        np.ascontiguousarray(boxes, np.float32).reshape(-1),
        np.ascontiguousarray(scores, np.float32),
        np.ascontiguousarray(classes, np.int32),
        float(iou_thresh),
        int(max_keep),
        kept,
    )
    return kept[:count]


class HostPost(NamedTuple):
    """One implementation of ``detections_from_dense``: ``name`` "cpp" or "numpy"."""

    name: str
    detections_from_dense: Callable[..., dict[str, np.ndarray]]


def host_post(choice: str | None = None) -> HostPost:
    """The implementation for ``choice`` ("auto", "cpp", "numpy"; None: ``RETINA_DEPLOY_HOST_POST``, else "auto").

    Raises ConfigError for an unknown choice, or "cpp" where the extension is not built."""
    where = "host post-processing" if choice is not None else HOST_POST_ENV
    choice = os.environ.get(HOST_POST_ENV, "auto") if choice is None else choice
    if choice not in HOST_POST_CHOICES:
        raise ConfigError(f"{where} {choice!r}: expected one of {', '.join(HOST_POST_CHOICES)}")
    if choice == "numpy" or (choice == "auto" and _native is None):
        return HostPost("numpy", host_nms.detections_from_dense)
    _require()
    return HostPost("cpp", detections_from_dense)


def _require():
    if _native is None:
        raise ConfigError(
            "the C++ host post-processing is not built in this install (it needs a C++17 compiler and the Python "
            "headers when the package is installed: reinstall with them, or set RETINA_DEPLOY_HOST_POST=numpy)"
        )
    return _native
