"""Equal scores on the host go where ONNX Runtime's in-graph ops put them (the ``--nms onnx`` file's order).

The per-level top-k against ONNX Runtime's TopK (lowest index first among equal values), and the NMS
with its final cut against the exported ``OnnxNmsHead`` run by ONNX Runtime, on sets made of ties.
"""

from __future__ import annotations

import numpy as np
import pytest

from retina_deploy.runtime.post.host_nms import batched_nms, topk_per_level

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")


def ort_topk(flat_per_level: list[np.ndarray], k: int) -> list[np.ndarray]:
    """ONNX Runtime's TopK (largest, sorted) of each level's flat scores [n_l]: indices per level."""
    from onnx import TensorProto, helper

    nodes, inputs, outputs, inits = [], [], [], []
    for i, flat in enumerate(flat_per_level):
        kk = min(k, flat.size)
        inputs.append(helper.make_tensor_value_info(f"x{i}", TensorProto.FLOAT, [1, flat.size]))
        inits.append(helper.make_tensor(f"k{i}", TensorProto.INT64, [1], [kk]))
        nodes.append(helper.make_node("TopK", [f"x{i}", f"k{i}"], [f"v{i}", f"i{i}"], axis=1))
        outputs.append(helper.make_tensor_value_info(f"i{i}", TensorProto.INT64, [1, kk]))
    graph = helper.make_graph(nodes, "topk", inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    feeds = {f"x{i}": flat[None] for i, flat in enumerate(flat_per_level)}
    return [out[0] for out in session.run(None, feeds)]


@pytest.mark.parametrize("levels, num_classes, k", [([300, 80, 20], 6, 100), ([9216, 36], 80, 1000)],
                         ids=["small-levels", "sampled-floor"])  # fmt: skip
@pytest.mark.parametrize("score_thresh", [None, 0.5])
def test_topk_ties_follow_onnx_runtime(levels, num_classes, k, score_thresh):
    rng = np.random.default_rng(k)
    # Ten distinct values only: every level is mostly ties, also across its k-th place.
    scores = (rng.integers(0, 10, (sum(levels), num_classes)) / 10).astype(np.float32)
    starts = np.cumsum([0, *levels])
    flats = [scores[a:b].reshape(-1) for a, b in zip(starts[:-1], starts[1:], strict=True)]
    expected_flat = []
    for start, idx, flat in zip(starts, ort_topk(flats, k), flats, strict=False):
        if score_thresh is not None:
            idx = idx[flat[idx] > np.float32(score_thresh)]
        expected_flat.append(start * num_classes + idx)
    expected_flat = np.concatenate(expected_flat)
    anchors, classes = topk_per_level(scores, levels, k, score_thresh=score_thresh)
    np.testing.assert_array_equal(anchors * num_classes + classes, expected_flat)


def onnx_nms_head_session(num_classes: int, num_candidates: int, max_dets: int, score_thresh: float, iou_thresh: float):
    """The ``--nms onnx`` graph's NMS and final cut (export.postprocess.OnnxNmsHead) in ONNX Runtime."""
    torch = pytest.importorskip("torch")
    import io

    from retina_deploy.export.postprocess import OnnxNmsHead

    head = OnnxNmsHead(num_classes=num_classes, num_candidates=num_candidates, max_dets=max_dets,
                       score_thresh=score_thresh, iou_thresh=iou_thresh).eval()  # fmt: skip
    example = (torch.zeros(1, num_candidates, 4), torch.zeros(1, num_candidates), torch.zeros(1, num_candidates,
               dtype=torch.int64))  # fmt: skip
    buf = io.BytesIO()
    torch.onnx.export(head, example, buf, dynamo=False, opset_version=17, input_names=["boxes", "scores", "classes"],
                      output_names=["num_dets", "det_boxes", "det_scores", "det_classes"])  # fmt: skip
    return ort.InferenceSession(buf.getvalue(), providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("max_dets", [300, 40, 5])
def test_nms_ties_follow_the_onnx_graph(max_dets):
    rng = np.random.default_rng(max_dets)
    n, num_classes, score_thresh, iou_thresh = 300, 3, 0.1, 0.5
    # Integer boxes on a coarse grid (many identical, IoUs exact fractions such as 1/2) and four
    # score values: equal scores everywhere, within and across classes, and across the max_dets cut.
    xy = rng.integers(0, 12, (n, 2)) * 2
    boxes = np.concatenate([xy, xy + rng.choice([4, 6, 8], (n, 2))], 1).astype(np.float32)
    scores = rng.choice(np.array([0.05, 0.3, 0.6, 0.9], np.float32), n)
    classes = rng.integers(0, num_classes, n)
    session = onnx_nms_head_session(num_classes, n, max_dets, score_thresh, iou_thresh)
    num, det_boxes, det_scores, det_classes = session.run(None, {"boxes": boxes[None], "scores": scores[None],
                                                                 "classes": classes[None]})  # fmt: skip
    above = np.flatnonzero(scores > score_thresh)  # detections_from_dense passes only these to the NMS
    keep = above[batched_nms(boxes[above], scores[above], classes[above], iou_thresh, max_dets)]
    assert num[0, 0] == len(keep) and (len(keep) == max_dets or max_dets == 300)
    np.testing.assert_array_equal(det_classes[0, : len(keep)], classes[keep])
    np.testing.assert_array_equal(det_scores[0, : len(keep)], scores[keep])
    np.testing.assert_array_equal(det_boxes[0, : len(keep)], boxes[keep])
