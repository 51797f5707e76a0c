"""Helpers the benchmark scripts share (run them as ``python benchmarks/NAME.py``: this folder is on sys.path)."""

from __future__ import annotations

from pathlib import Path

from retina_deploy.runtime.bench.stats import summarize, time_alternating


def paired_medians(fn_a, fn_b, iters: int, warmup: int = 2) -> tuple[float, float]:
    """Median seconds of ``fn_a`` and ``fn_b``, timed alternately so that load drift hits both alike.

    The timing is ``retina-deploy bench``'s own (``runtime.bench.stats``): one timer for every benchmark.
    """
    timings = time_alternating([lambda sw: fn_a(), lambda sw: fn_b()], iters, warmup=warmup)
    return summarize(timings[0].total).median, summarize(timings[1].total).median


def random_checkpoint(
    out_dir: Path,
    *,
    backbone: str,
    size: tuple[int, int],
    head_norm: str = "none",
    num_classes: int = 80,
    cls_bias: float = -3.0,
    **model_cfg,
) -> Path:
    """A random-weights checkpoint whose scores spread around sigmoid(cls_bias) (many NMS candidates: a
    realistic load); ``model_cfg``: further ModelConfig fields. Needs torch."""
    import torch

    from retina_deploy.model import build_model
    from retina_deploy.model.checkpoint import save_checkpoint
    from retina_deploy.model.config import ModelConfig
    from retina_deploy.runtime.image.preprocess import PreprocessConfig

    torch.manual_seed(0)
    model = build_model(ModelConfig(backbone=backbone, num_classes=num_classes, head_norm=head_norm, **model_cfg))
    with torch.no_grad():
        model.head.classification_head.cls_logits.weight.normal_(0, 0.02)
        model.head.classification_head.cls_logits.bias.fill_(cls_bias)
    names = [f"class{i}" for i in range(num_classes)]
    return save_checkpoint(model, out_dir / "ckpt", class_names=names, preprocess=PreprocessConfig(size=size))
