"""Export-friendly RetinaNet post-processing: fixed shapes, TopK (never NonZero), constant anchors.

Three heads sit on top of the per-level head outputs (logits [B, HWA, C], deltas [B, HWA, 4]):

- ``OnnxNmsHead``: per-level top-k candidates, decode, class-aware ``NonMaxSuppression``, top-K, zero padding.
- ``EfficientNmsHead``: the same candidates fed to one ``EfficientNMS_TRT`` plugin node (TensorRT only).
- ``DenseHead``: decoded boxes and sigmoid scores of every anchor (the caller does top-k and NMS).

Every op works per batch row, so row i of a batch equals the single-image result. The ONNX ops are
emitted by ``torch.autograd.Function.symbolic`` for the TorchScript-based exporter (``dynamo=False``);
their eager ``forward`` computes the same result, so the modules also run in PyTorch.

Why not PyTorch eval's code (``RetinaNet.postprocess``): it thresholds before its top-k and keeps a
dynamic number of candidates (NonZero, which TensorRT-RTX cannot parse); here TopK runs first on fixed
shapes and the threshold after it. Both select the same candidates, equal scores at the k-th place aside
(tests compare the two), so the difference lives only in how the graph is built.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import nms

from retina_deploy.model import box_coder
from retina_deploy.runtime.post.host_nms import efficient_nms

EFFICIENT_NMS_DOMAIN = "TRT"  # the domain TensorRT users emit the plugin in; the parser matches on op type
_NOT_A_CANDIDATE = -1.0  # below any score threshold >= 0, for every backend's > or >= comparison


def clip_to_image(boxes: Tensor, upper: Tensor) -> Tensor:
    """Clip xyxy ``boxes`` [..., 4] to [0, W] x [0, H]; ``upper`` is [W, H, W, H] float32."""
    return torch.minimum(boxes.clamp(min=0.0), upper)


class CandidatesPerLevel(nn.Module):
    """Top-k (anchor, class) pairs per FPN level, decoded against constant anchors and clipped.

    Args:
        anchors_per_level: per level [HWA_l, 4] float32 xyxy input pixels, for the fixed input size.
        image_hw: (H, W) of the input; boxes are clipped to it.
        num_classes: C.
        topk_per_level: k; a level keeps min(k, HWA_l * C) candidates.
        bbox_reg_clamp: upper bound of dw, dh before exp.

    forward(logits per level [B, HWA_l, C], deltas per level [B, HWA_l, 4]) returns
        boxes [B, N', 4] float32 xyxy clipped, scores [B, N'] float32 (sigmoid, sorted within each
        level, not thresholded), classes [B, N'] int64 in 0..C-1, with N' = sum_l min(k, HWA_l * C).
    """

    def __init__(
        self,
        anchors_per_level: list[Tensor],
        image_hw: tuple[int, int],
        *,
        num_classes: int,
        topk_per_level: int,
        bbox_reg_clamp: float,
    ) -> None:
        super().__init__()
        self.num_levels = len(anchors_per_level)
        for i, anchors in enumerate(anchors_per_level):
            self.register_buffer(f"anchors_{i}", anchors.float().contiguous())
        h, w = image_hw
        self.register_buffer("upper", torch.tensor([w, h, w, h], dtype=torch.float32))
        self.num_classes = num_classes
        self.k_per_level = [min(topk_per_level, a.shape[0] * num_classes) for a in anchors_per_level]
        self.bbox_reg_clamp = bbox_reg_clamp

    @property
    def num_candidates(self) -> int:
        return sum(self.k_per_level)

    def forward(self, cls_per_level: list[Tensor], box_per_level: list[Tensor]) -> tuple[Tensor, Tensor, Tensor]:
        boxes_all, scores_all, classes_all = [], [], []
        for i, (logits, deltas) in enumerate(zip(cls_per_level, box_per_level, strict=True)):
            anchors = getattr(self, f"anchors_{i}")
            # sigmoid is monotonic: top-k on logits selects the same pairs and needs k sigmoids, not HWA*C.
            top_logits, flat_idx = logits.flatten(1).topk(self.k_per_level[i], dim=1)
            anchor_idx = torch.div(flat_idx, self.num_classes, rounding_mode="floor")
            level_deltas = deltas.gather(1, anchor_idx.unsqueeze(-1).expand(-1, -1, 4))
            boxes = box_coder.decode(level_deltas, anchors[anchor_idx], self.bbox_reg_clamp)
            boxes_all.append(clip_to_image(boxes, self.upper))
            scores_all.append(torch.sigmoid(top_logits))
            classes_all.append(flat_idx - anchor_idx * self.num_classes)
        return torch.cat(boxes_all, 1), torch.cat(scores_all, 1), torch.cat(classes_all, 1)


class NonMaxSuppressionOp(torch.autograd.Function):
    """ONNX ``NonMaxSuppression`` (center_point_box=0) on boxes [B, N, 4] and scores [B, C, N].

    Returns selected indices [S, 3] int64 (batch, class, box): per batch row and class, boxes with
    score > score_thresh, greedily kept in score order, dropping IoU > iou_thresh with a kept box,
    at most ``max_per_class``. Eager mode uses torchvision's nms (same rules).
    """

    @staticmethod
    def forward(ctx, boxes: Tensor, scores: Tensor, max_per_class: int, iou_thresh: float, score_thresh: float):
        rows = []
        for b in range(scores.shape[0]):
            for c in range(scores.shape[1]):
                idx = torch.where(scores[b, c] > score_thresh)[0]
                keep = idx[nms(boxes[b, idx], scores[b, c, idx], iou_thresh)][:max_per_class]
                rows.append(torch.stack([torch.full_like(keep, b), torch.full_like(keep, c), keep], dim=1))
        return torch.cat(rows) if rows else torch.zeros(0, 3, dtype=torch.int64)

    @staticmethod
    def symbolic(g, boxes, scores, max_per_class: int, iou_thresh: float, score_thresh: float):
        return g.op(
            "NonMaxSuppression",
            boxes,
            scores,
            g.op("Constant", value_t=torch.tensor([max_per_class], dtype=torch.int64)),
            g.op("Constant", value_t=torch.tensor([iou_thresh], dtype=torch.float32)),
            g.op("Constant", value_t=torch.tensor([score_thresh], dtype=torch.float32)),
            center_point_box_i=0,
        )


class OnnxNmsHead(nn.Module):
    """Candidates -> class-aware NonMaxSuppression -> the K best kept, zero-padded.

    forward(boxes [B, N', 4], scores [B, N'], classes [B, N'] int64) returns num_dets [B, 1] int32,
    boxes [B, K, 4] float32, scores [B, K] float32 (descending, each > score_thresh), classes [B, K]
    int32; entries past num_dets are 0.
    """

    def __init__(
        self, *, num_classes: int, num_candidates: int, max_dets: int, score_thresh: float, iou_thresh: float
    ) -> None:
        super().__init__()
        self.register_buffer("class_ids", torch.arange(num_classes).view(1, num_classes, 1))
        self.num_candidates = num_candidates
        self.max_dets = max_dets
        self.score_thresh = score_thresh
        self.iou_thresh = iou_thresh

    def forward(self, boxes: Tensor, scores: Tensor, classes: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        # Classes as the second dimension of the scores: NonMaxSuppression runs per class, exactly.
        own_class = (classes.unsqueeze(1) == self.class_ids) & (scores > self.score_thresh).unsqueeze(1)
        scores_bcn = torch.where(own_class, scores.unsqueeze(1), _NOT_A_CANDIDATE)
        selected = NonMaxSuppressionOp.apply(boxes, scores_bcn, self.max_dets, self.iou_thresh, self.score_thresh)
        kept = torch.zeros_like(scores)
        kept[selected[:, 0], selected[:, 2]] = 1.0  # ScatterND; (batch, box) pairs are unique
        ranked = torch.where(kept > 0, scores, _NOT_A_CANDIDATE)
        return select_top(ranked, boxes, classes, min(self.max_dets, self.num_candidates), self.max_dets)


def select_top(ranked: Tensor, boxes: Tensor, classes: Tensor, k: int, max_dets: int):
    """The k best of ``ranked`` [B, N'] (entries < 0 are not detections), zero-padded to ``max_dets``."""
    top_scores, idx = ranked.topk(k, dim=1)
    valid = top_scores >= 0
    num_dets = valid.sum(1, keepdim=True).to(torch.int32)
    top_boxes = boxes.gather(1, idx.unsqueeze(-1).expand(-1, -1, 4)) * valid.unsqueeze(-1)
    top_scores = top_scores * valid
    top_classes = (classes.gather(1, idx) * valid).to(torch.int32)
    pad = max_dets - k
    if pad:
        top_boxes = F.pad(top_boxes, (0, 0, 0, pad))
        top_scores = F.pad(top_scores, (0, pad))
        top_classes = F.pad(top_classes, (0, pad))
    return num_dets, top_boxes, top_scores, top_classes


class EfficientNmsOp(torch.autograd.Function):
    """TensorRT's ``EfficientNMS_TRT`` plugin (standard mode, BoxCorner coding, no background class).

    boxes [B, N, 4] float32 xyxy, scores [B, N, C] float32 -> num_dets [B, 1] int32, boxes [B, K, 4],
    scores [B, K], classes [B, K] int32. Eager mode runs the numpy reference of the plugin.
    """

    @staticmethod
    def forward(ctx, boxes: Tensor, scores: Tensor, max_dets: int, iou_thresh: float, score_thresh: float):
        outs = efficient_nms(
            boxes.detach().cpu().numpy(),
            scores.detach().cpu().numpy(),
            score_threshold=score_thresh,
            iou_threshold=iou_thresh,
            max_output_boxes=max_dets,
        )
        return tuple(torch.from_numpy(o).to(boxes.device) for o in outs)

    @staticmethod
    def symbolic(g, boxes, scores, max_dets: int, iou_thresh: float, score_thresh: float):
        outs = g.op(
            f"{EFFICIENT_NMS_DOMAIN}::EfficientNMS_TRT",
            boxes,
            scores,
            outputs=4,
            plugin_version_s="1",
            background_class_i=-1,
            box_coding_i=0,
            class_agnostic_i=0,
            iou_threshold_f=iou_thresh,
            max_output_boxes_i=max_dets,
            score_activation_i=0,
            score_threshold_f=score_thresh,
        )
        batch = boxes.type().sizes()[0] if boxes.type().sizes() else None
        for out, dtype, sizes in zip(
            outs,
            (torch.int32, torch.float32, torch.float32, torch.int32),
            ([batch, 1], [batch, max_dets, 4], [batch, max_dets], [batch, max_dets]),
            strict=True,
        ):
            out.setType(boxes.type().with_dtype(dtype).with_sizes(sizes))
        return outs


class EfficientNmsHead(nn.Module):
    """Candidates -> one ``EfficientNMS_TRT`` node; same outputs as ``OnnxNmsHead``.

    Candidates at or below score_thresh get score -1 first, so the plugin's ``>=`` threshold keeps
    exactly the ``> score_thresh`` candidates that PyTorch keeps. Plugin semantics that differ from
    torchvision: IoU >= iou_thresh suppresses (torchvision: >), and only the 4096 best candidates
    enter NMS (N' = sum of the per-level k may exceed that only with topk_per_level > 819).
    """

    def __init__(self, *, num_classes: int, max_dets: int, score_thresh: float, iou_thresh: float) -> None:
        super().__init__()
        self.register_buffer("class_ids", torch.arange(num_classes).view(1, 1, num_classes))
        self.max_dets = max_dets
        self.score_thresh = score_thresh
        self.iou_thresh = iou_thresh

    def forward(self, boxes: Tensor, scores: Tensor, classes: Tensor):
        own_class = (classes.unsqueeze(-1) == self.class_ids) & (scores > self.score_thresh).unsqueeze(-1)
        scores_bnc = torch.where(own_class, scores.unsqueeze(-1), _NOT_A_CANDIDATE)
        return EfficientNmsOp.apply(boxes, scores_bnc, self.max_dets, self.iou_thresh, self.score_thresh)


class DenseHead(nn.Module):
    """Every anchor decoded: boxes [B, N, 4] float32 xyxy clipped to the input, scores [B, N, C] sigmoid.

    N = sum_l HWA_l in torchvision's order (level, then grid y, x, then anchor).
    """

    def __init__(self, anchors_per_level: list[Tensor], image_hw: tuple[int, int], *, bbox_reg_clamp: float) -> None:
        super().__init__()
        self.register_buffer("anchors", torch.cat(anchors_per_level).float().contiguous())
        h, w = image_hw
        self.register_buffer("upper", torch.tensor([w, h, w, h], dtype=torch.float32))
        self.bbox_reg_clamp = bbox_reg_clamp

    def forward(self, cls_per_level: list[Tensor], box_per_level: list[Tensor]) -> tuple[Tensor, Tensor]:
        deltas = torch.cat(box_per_level, 1)
        boxes = clip_to_image(box_coder.decode(deltas, self.anchors, self.bbox_reg_clamp), self.upper)
        return boxes, torch.sigmoid(torch.cat(cls_per_level, 1))
