"""What a backend provides and what the Detector must know about a model: shared by ``detector`` and ``backends``."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from retina_deploy.core.errors import ImageError, ModelFileError
from retina_deploy.runtime.contract.onnx_metadata import NmsSettings
from retina_deploy.runtime.image.preprocess import PreprocessConfig

ImageInput = np.ndarray | str | os.PathLike | bytes


class Backend(Protocol):
    """What the Detector needs from an inference backend.

    name: e.g. "onnxruntime-cpu", "tensorrt", "tensorrt-rtx".
    input_size: (H, W) of the network input.
    batch_range: (min, max) batch sizes ``run`` accepts.
    run: float32 [B, 3, H, W] -> {output name: array with leading dim B}; need not be thread-safe.
    """

    name: str
    input_size: tuple[int, int]
    batch_range: tuple[int, int]

    def run(self, batch: np.ndarray) -> dict[str, np.ndarray]: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class ModelSpec:
    """What the Detector must know about a model file (from ONNX metadata or the engine manifest).

    class_names: C names, index = class id.
    preprocess: the preprocessing the model was trained and exported with.
    nms: post-processing settings; mode "none" means the outputs are dense and NMS runs on the host.
    anchors_per_level: H_l * W_l * 9 per FPN level (the layout of dense outputs).
    """

    class_names: tuple[str, ...]
    preprocess: PreprocessConfig
    nms: NmsSettings
    anchors_per_level: tuple[int, ...]

    @classmethod
    def from_postprocess_record(
        cls, class_names: Sequence[str], preprocess_cfg: PreprocessConfig, record: dict[str, Any], source: str
    ) -> ModelSpec:
        """From an engine manifest's ``postprocess`` record: {"nms": {...}, "anchors_per_level": [...]}."""
        try:
            return cls(
                class_names=tuple(class_names),
                preprocess=preprocess_cfg,
                nms=NmsSettings(**record["nms"]),
                anchors_per_level=tuple(int(n) for n in record["anchors_per_level"]),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise ModelFileError(f"{source}: bad post-processing record in the manifest: {e}") from e


def check_images(images: np.ndarray, input_size: tuple[int, int]) -> None:
    """ImageError unless ``images`` is float32 [B, 3, H, W] with B >= 1 and (H, W) = ``input_size``."""
    h, w = input_size
    if not isinstance(images, np.ndarray) or images.dtype != np.float32:
        raise ImageError(f"images must be a float32 numpy array, got {getattr(images, 'dtype', type(images))}")
    if images.ndim != 4 or images.shape[1:] != (3, h, w) or images.shape[0] < 1:
        raise ImageError(f"images must have shape [B, 3, {h}, {w}] with B >= 1, got {list(images.shape)}")


def run_in_chunks(
    run_chunk: Callable[[np.ndarray], Sequence[np.ndarray]],
    images: np.ndarray,
    max_batch: int,
    output_names: Sequence[str],
) -> dict[str, np.ndarray]:
    """``run_chunk`` (float32 [b, 3, H, W], b <= max_batch -> one array per output name) over all of
    ``images`` in chunks of ``max_batch``; returns {name: outputs concatenated along the batch}."""
    chunks = [run_chunk(images[i : i + max_batch]) for i in range(0, images.shape[0], max_batch)]
    return {
        name: np.concatenate([c[j] for c in chunks]) if len(chunks) > 1 else chunks[0][j]
        for j, name in enumerate(output_names)
    }
