"""Ways a backend's detection outputs can be wrong, each a function of the good outputs of a batch.

Used on a local fake backend (test_detector_bad_inputs) and over the triton:// stand-in (test_triton_backend):
each must end in ``ModelOutputError`` naming the backend and the model, never a traceback or AP 0.
"""

from __future__ import annotations

import numpy as np


def _set(name, index, value):
    def corrupt(out):
        out = {k: np.array(v) for k, v in out.items()}
        out[name][index] = value
        return out

    return corrupt


def _replace(name, fn):
    def corrupt(out):
        return {**out, name: fn(np.asarray(out[name]))}

    return corrupt


# name: (corruption, part of the expected message). The good outputs have num_dets 1 for every image,
# K = 2, score in (0, 1) at entry 0.
CORRUPTIONS = {
    "nan_box": (_set("boxes", (0, 0, 1), np.nan), "boxes hold NaN or infinite"),
    "inf_box": (_set("boxes", (0, 0, 2), np.inf), "boxes hold NaN or infinite"),
    "nan_score": (_set("scores", (0, 0), np.nan), r"scores outside \(0, 1\]"),
    "score_above_1": (_set("scores", (0, 0), 1.5), r"scores outside \(0, 1\]"),
    "zero_score": (_set("scores", (0, 0), 0.0), r"scores outside \(0, 1\]"),
    "negative_score": (_set("scores", (0, 0), -0.25), r"scores outside \(0, 1\]"),
    "ascending_scores": (
        lambda out: _set("scores", (0, 1), 0.99)(_set("num_dets", (0, 0), 2)(out)),
        "not in descending order",
    ),
    "num_dets_above_k": (_set("num_dets", (0, 0), 3), r"num_dets .* outside \[0, 2\]"),
    "negative_num_dets": (_set("num_dets", (0, 0), -1), r"num_dets .* outside \[0, 2\]"),
    "class_out_of_range": (_set("classes", (0, 0), 7), "class ids outside 0..1"),
    "fewer_rows": (lambda out: {k: np.asarray(v)[:-1] for k, v in out.items()}, "rows"),
    "boxes_5_wide": (_replace("boxes", lambda a: np.concatenate([a, a[..., :1]], -1)), "do not match"),
    "scores_3d": (_replace("scores", lambda a: a[..., None]), "expected 2 dims"),
    "k_mismatch": (_replace("classes", lambda a: a[:, :1]), "do not match"),
    "missing_output": (lambda out: {k: v for k, v in out.items() if k != "classes"}, "no output 'classes'"),
}
