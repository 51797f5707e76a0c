"""``TorchBackend``: a PyTorch RetinaNet (a checkpoint folder, or a model in memory) behind the runtime's ``Backend``.

``run(images float32 [B, 3, H, W])`` answers exactly what an ``--nms onnx`` file answers: ``num_dets``
[B, 1] int32, ``boxes`` [B, K, 4] float32 xyxy input pixels, ``scores`` [B, K] float32 descending,
``classes`` [B, K] int32, zero-padded past num_dets, K = the model's ``detections_per_img``. So
``Detector(TorchBackend(...), spec)`` checks and maps a checkpoint's detections with the code every
exported file goes through. It lives outside ``runtime/``: the runtime never imports torch.

Optional hooks that ``bench`` reads with ``getattr`` (as it does ``TrtBackend``'s):
``enable_phase_timing`` + ``last_timings_s`` (CUDA events: h2d / compute / d2h, on a GPU only),
``flops_per_image``, ``gpu_peak_mib`` / ``reset_gpu_peak``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from retina_deploy.core.argcheck import int_at_least
from retina_deploy.core.errors import ModelOutputError
from retina_deploy.runtime.contract.onnx_metadata import NmsSettings
from retina_deploy.runtime.contract.spec import ModelSpec
from retina_deploy.runtime.image.preprocess import PreprocessConfig

UNBOUNDED_BATCH = 2**31 - 1  # PyTorch runs any batch size


def checkpoint_spec(settings, class_names: Sequence[str], preprocess_cfg: PreprocessConfig) -> ModelSpec:
    """The ``ModelSpec`` of a RetinaNet from the settings of its eval-mode post-processing, in the
    ``--nms onnx`` layout. settings: anything with ``score_thresh``, ``nms_thresh``, ``topk_candidates``
    and ``detections_per_img`` (our ``ModelConfig``; a torchvision ``RetinaNet`` has the same names)."""
    from retina_deploy.model.anchors import ANCHORS_PER_LOCATION, grids_for_input  # torchvision's layout too

    nms = NmsSettings(
        mode="onnx",  # detections come out of the model (its own NMS), as from an --nms onnx file
        max_dets=settings.detections_per_img,
        score_thresh=settings.score_thresh,
        iou_thresh=settings.nms_thresh,
        topk_per_level=settings.topk_candidates,
    )
    anchors = tuple(h * w * ANCHORS_PER_LOCATION for h, w in grids_for_input(tuple(preprocess_cfg.size)))
    return ModelSpec(tuple(class_names), preprocess_cfg, nms, anchors)


class TorchBackend:
    """A PyTorch detector behind the runtime's Backend protocol.

    model: an ``nn.Module`` whose eval-mode call maps images float32 [B, 3, H, W] to one dict per
        image: "boxes" [N, 4] xyxy input pixels, "scores" [N] descending in (0, 1], "labels" int [N]
        in 0..C-1, N <= ``max_dets`` (a RetinaNet; see ``retina_deploy.model.retinanet``).
        It is moved to ``device`` and put in eval mode here (a caller that trains it sets train mode back).
    input_size: (H, W) of the images ``run`` takes. max_dets: K of the outputs.
    device: "cpu", "cuda", "cuda:N" or a ``torch.device``.
    compile_model: run through ``torch.compile`` (the eager module still counts FLOPs).
    inference_mode: run under ``torch.inference_mode`` (a model this backend owns) rather than
        ``torch.no_grad`` (a model in training, whose cached anchors must stay usable by autograd).
    """

    def __init__(
        self,
        model,
        *,
        input_size: tuple[int, int],
        max_dets: int,
        device="cpu",
        compile_model: bool = False,
        inference_mode: bool = False,
    ) -> None:
        import torch

        self.torch = torch
        self.device = torch.device(device)
        self.eager = model.to(self.device).eval()
        self.model = torch.compile(self.eager) if compile_model else self.eager
        self.name = "torch-compile" if compile_model else "torch-eager"
        self.input_size: tuple[int, int] = (int(input_size[0]), int(input_size[1]))
        self.batch_range: tuple[int, int] = (1, UNBOUNDED_BATCH)
        self.max_dets = int_at_least("max_dets", max_dets, 1)
        self.cuda = self.device.type == "cuda"
        self._grad_off = torch.inference_mode if inference_mode else torch.no_grad
        self._timing = False
        self.last_timings_s: dict[str, float] | None = None

    @classmethod
    def from_checkpoint(
        cls,
        path: str | os.PathLike,
        *,
        device: str = "cpu",
        num_threads: int | None = None,
        compile_model: bool = False,
    ) -> tuple[TorchBackend, ModelSpec]:
        """A checkpoint folder's RetinaNet on ``device`` ("cpu" or "cuda:N", present: ``open_model`` checks)
        and its ModelSpec. num_threads: PyTorch's intra-op threads (process-wide; None: PyTorch's default).
        Raises CheckpointError, ConfigError (num_threads).
        """
        import torch

        from retina_deploy.model.checkpoint import load_checkpoint

        if num_threads is not None:
            torch.set_num_threads(int_at_least("num_threads", num_threads, 1))
        torch_device = torch.device(device)
        model, info = load_checkpoint(path, map_location=torch_device)
        backend = cls(
            model,
            input_size=tuple(info.preprocess.size),
            max_dets=info.model.detections_per_img,
            device=torch_device,
            compile_model=compile_model,
            inference_mode=True,
        )
        return backend, checkpoint_spec(info.model, info.class_names, info.preprocess)

    def run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """float32 [B, 3, H, W] -> num_dets [B, 1] int32, boxes [B, K, 4], scores [B, K], classes [B, K] int32."""
        torch = self.torch
        if self.model is None:
            raise RuntimeError(f"the {self.name} backend is closed")
        x = torch.from_numpy(batch)
        events = [torch.cuda.Event(enable_timing=True) for _ in range(4)] if self._timing and self.cuda else None
        with self._grad_off():
            if events:
                events[0].record()
            x = x.to(self.device, non_blocking=events is not None)
            if events:
                events[1].record()
            packed = pack_detections(self.model(x), self.max_dets)
            if events:
                events[2].record()
                packed = {k: v.to("cpu", non_blocking=True) for k, v in packed.items()}
                events[3].record()
                events[3].synchronize()
                pairs = {"h2d": (0, 1), "compute": (1, 2), "d2h": (2, 3)}
                self.last_timings_s = {k: events[a].elapsed_time(events[b]) / 1e3 for k, (a, b) in pairs.items()}
            else:
                packed = {k: v.cpu() for k, v in packed.items()}
        return {k: v.numpy() for k, v in packed.items()}

    # ------------------------------------------------------------------ bench hooks

    def enable_phase_timing(self) -> None:
        """Time h2d / compute / d2h of each ``run`` with CUDA events into ``last_timings_s`` (GPU only)."""
        self._timing = True

    def flops_per_image(self) -> tuple[int | None, str]:
        """FLOPs of one image's forward pass from PyTorch's FLOP counter (convolutions and matrix products)."""
        torch = self.torch
        from torch.utils.flop_counter import FlopCounterMode

        x = torch.zeros(1, 3, *self.input_size, device=self.device)
        with self._grad_off(), FlopCounterMode(display=False) as counter:
            self.eager(x)
        return int(counter.get_total_flops()), "torch FlopCounterMode (conv + matmul)"

    def gpu_peak_mib(self) -> float | None:
        """Peak memory PyTorch allocated on the GPU since ``reset_gpu_peak``, MiB (None on the CPU)."""
        return self.torch.cuda.max_memory_allocated(self.device) / 2**20 if self.cuda else None

    def reset_gpu_peak(self) -> None:
        if self.cuda:
            self.torch.cuda.reset_peak_memory_stats(self.device)

    def close(self) -> None:
        self.model = self.eager = None


def pack_detections(outputs: Sequence[dict], max_dets: int) -> dict:
    """Per-image model outputs ({"boxes" [N, 4], "scores" [N], "labels" [N]}, N <= K) as the fixed-size
    detection outputs (torch tensors on their device): num_dets [B, 1] int32, boxes [B, K, 4] float32,
    scores [B, K] float32, classes [B, K] int32, zeros past num_dets. ModelOutputError when N > K."""
    import torch

    b, k = len(outputs), max_dets
    device = outputs[0]["scores"].device if outputs else "cpu"
    num = torch.zeros(b, 1, dtype=torch.int32, device=device)
    boxes = torch.zeros(b, k, 4, dtype=torch.float32, device=device)
    scores = torch.zeros(b, k, dtype=torch.float32, device=device)
    classes = torch.zeros(b, k, dtype=torch.int32, device=device)
    for i, out in enumerate(outputs):
        n = int(out["scores"].shape[0])
        if n > k:
            raise ModelOutputError(f"the PyTorch model returned {n} detections for image {i}, more than max_dets {k}")
        num[i, 0] = n
        boxes[i, :n] = out["boxes"]
        scores[i, :n] = out["scores"]
        classes[i, :n] = out["labels"]
    return {"num_dets": num, "boxes": boxes, "scores": scores, "classes": classes}
