"""``Detector``: a model's ``Backend`` in, ``Detections`` in each original image's pixels out (torch-free).

One code path for every backend: decode and validate each image, the shared preprocessing, batches
chunked to the model's batch range, the backend, host NMS for ``--nms none`` files, boxes mapped
back to each original image and clipped. A backend is anything with ``input_size``, ``batch_range``
and ``run(batch float32 [B, 3, H, W]) -> {output name: array}``.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping, Sequence, Set
from dataclasses import dataclass

import numpy as np

from retina_deploy.core.argcheck import int_at_least
from retina_deploy.core.errors import ImageError, ModelFileError
from retina_deploy.runtime.contract.output_checks import check_dense, check_detections, detection_arrays, output_array
from retina_deploy.runtime.contract.spec import Backend, ImageInput, ModelSpec
from retina_deploy.runtime.image.image_io import DEFAULT_MAX_PIXELS, as_rgb_array, load_image
from retina_deploy.runtime.image.preprocess import PreprocessConfig, preprocess
from retina_deploy.runtime.post.detections import Detections, make_detections
from retina_deploy.runtime.post.native import host_post


@dataclass(frozen=True)
class PreparedImage:
    """One image ready for a batch: chw float32 [3, H, W], the resize ``scale``, original (h, w)."""

    chw: np.ndarray
    scale: float
    orig_hw: tuple[int, int]


class Detector:
    """Detections from any ``Backend`` (an ONNX file, a TensorRT engine, a Triton model; outside the
    runtime, a PyTorch checkpoint: ``retina_deploy.inference.open_model`` opens them all); thread-safe.

    ``detect(images)`` takes a sequence of images (uint8 arrays [h, w, 3] in ``channel_order``, or
    JPEG/PNG/BMP paths or bytes) and returns one ``Detections`` per image: boxes float32 [N, 4] xyxy
    in that image's original pixels, clipped to it, scores float32 [N] descending, class_ids int64 [N],
    class_names. Lists longer than the maximum batch are run in chunks.
    """

    def __init__(
        self, backend: Backend, spec: ModelSpec, *, max_pixels: int = DEFAULT_MAX_PIXELS, source: str = "(in memory)"
    ) -> None:
        if tuple(backend.input_size) != tuple(spec.preprocess.size):
            raise ModelFileError(
                f"backend input size {backend.input_size} differs from the preprocessing size {spec.preprocess.size}"
            )
        self.max_pixels = int_at_least("max_pixels", max_pixels, 1)
        self.backend = backend
        self.spec = spec
        self.source = str(source)  # the file or URL, named in errors about the backend's outputs
        self.host_post = host_post()  # --nms none files: C++ when built, else numpy (RETINA_DEPLOY_HOST_POST)
        self._lock = threading.Lock()

    @classmethod
    def load(
        cls,
        path: str | os.PathLike,
        backend: str = "auto",
        device: int = 0,
        *,
        cuda_graphs: bool = False,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        num_threads: int | None = None,
    ) -> Detector:
        """Open ``path`` (.onnx or .engine); class names, preprocessing, NMS settings and batch range
        come from the ONNX metadata or the engine manifest.

        Args:
            backend: "auto" (.onnx: ONNX Runtime, CUDA provider if installed else CPU; .engine: the
                manifest's TensorRT flavour), "ort-cpu", "ort-cuda", "ort-tensorrt", "openvino" (CPU),
                "tensorrt", "tensorrt-rtx".
            device: GPU index for CUDA / TensorRT.
            cuda_graphs: capture one CUDA graph per batch size (engines only).
            max_pixels: largest accepted image (width * height), checked before decoding.
            num_threads: ONNX Runtime intra-op / OpenVINO inference threads, >= 1 (None: their default).

        Raises ModelFileError (missing, foreign, tampered or mismatched file; engines: says to
        rebuild), ConfigError (unknown or uninstalled backend), NoCudaDeviceError (engine, no GPU).
        """
        from retina_deploy.runtime.backends import open_backend

        if not isinstance(path, (str, os.PathLike)):
            raise TypeError(f"Detector.load needs a path (str or os.PathLike) to a .onnx or .engine file, got {path!r}")
        int_at_least("max_pixels", max_pixels, 1)  # before the (slow) model load
        if num_threads is not None:
            num_threads = int_at_least("num_threads", num_threads, 1)
        opened, spec = open_backend(path, backend, device, cuda_graphs=cuda_graphs, num_threads=num_threads)
        return cls(opened, spec, max_pixels=max_pixels, source=os.fspath(path))

    # ------------------------------------------------------------------ properties

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.spec.class_names

    @property
    def preprocess_cfg(self) -> PreprocessConfig:
        return self.spec.preprocess

    @property
    def min_batch(self) -> int:
        return int(self.backend.batch_range[0])

    @property
    def max_batch(self) -> int:
        return int(self.backend.batch_range[1])

    # ------------------------------------------------------------------ public API

    def detect(self, images: Sequence[ImageInput] | np.ndarray, *, channel_order: str = "rgb") -> list[Detections]:
        """One ``Detections`` per image of ``images`` (a sequence, or a uint8 array [B, h, w, 3])."""
        items = _as_list(images)
        results: list[Detections] = []
        for start in range(0, len(items), self.max_batch):  # preprocess per chunk: memory stays bounded
            chunk = items[start : start + self.max_batch]
            prepared = [self.prepare(img, channel_order=channel_order, index=start + i) for i, img in enumerate(chunk)]
            results.extend(self.run_prepared(prepared))
        return results

    def detect_one(self, image: ImageInput, *, channel_order: str = "rgb") -> Detections:
        """``Detections`` of one image (array or path)."""
        return self.run_prepared([self.prepare(image, channel_order=channel_order)])[0]

    def prepare(self, image: ImageInput, *, channel_order: str = "rgb", index: int | None = None) -> PreparedImage:
        """Decode (paths, bytes) or validate (arrays) one image and preprocess it.

        ``channel_order`` describes arrays only; files are always decoded as RGB. Raises ImageError
        naming the file, or the image's position in the batch for arrays.
        """
        where = "image" if index is None else f"images[{index}]"
        if isinstance(image, np.ndarray):
            try:
                rgb = as_rgb_array(image, channel_order)
            except ImageError as e:
                raise ImageError(f"{where}: {e}") from e
            if rgb.shape[0] * rgb.shape[1] > self.max_pixels:
                raise ImageError(f"{where}: {rgb.shape[1]}x{rgb.shape[0]} exceeds max_pixels={self.max_pixels}")
        elif isinstance(image, (str, os.PathLike, bytes, bytearray, memoryview)):
            rgb = load_image(image, max_pixels=self.max_pixels)
        else:
            raise ImageError(f"{where}: expected a uint8 array [h, w, 3], a path or bytes, got {type(image).__name__}")
        chw, scale = preprocess(rgb, self.spec.preprocess)
        return PreparedImage(chw, scale, (int(rgb.shape[0]), int(rgb.shape[1])))

    def run_prepared(self, prepared: Sequence[PreparedImage]) -> list[Detections]:
        """Detections of prepared images, run in chunks of at most ``max_batch``."""
        results: list[Detections] = []
        for start in range(0, len(prepared), self.max_batch):
            chunk = prepared[start : start + self.max_batch]
            outputs = self.run_batch(np.stack([p.chw for p in chunk]))
            results.extend(self._to_detections(outputs, chunk))
        return results

    def run_batch(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """Backend + host NMS on a preprocessed batch float32 [B, 3, H, W], 1 <= B <= max_batch.

        Returns the detection outputs for the B images: num_dets [B, 1] int32, boxes [B, K, 4]
        float32 xyxy input pixels, scores [B, K] float32, classes [B, K] int32 (valid up to num_dets).
        """
        b = batch.shape[0]
        if not 1 <= b <= self.max_batch:
            raise ValueError(f"batch of {b} images is outside 1..{self.max_batch}")
        if b < self.min_batch:  # an engine profile that starts above 1: pad with blank images
            pad = np.zeros((self.min_batch - b, *batch.shape[1:]), np.float32)
            batch = np.concatenate([batch, pad])
        with self._lock:
            raw = self.backend.run(np.ascontiguousarray(batch, dtype=np.float32))
        return self._detection_outputs(raw, b)

    # ------------------------------------------------------------------ post-processing

    def postprocess(self, raw: dict[str, np.ndarray], prepared: Sequence[PreparedImage]) -> list[Detections]:
        """One ``Detections`` per image of ``prepared`` from the backend's ``raw`` answer to their batch
        (padded to ``min_batch`` or not): host NMS for ``--nms none`` models, the output checks, boxes
        mapped to each original image. ``run_prepared`` is ``run_batch`` then these same steps."""
        return self._to_detections(self._detection_outputs(raw, len(prepared)), prepared)

    def _detection_outputs(self, raw: dict[str, np.ndarray], b: int) -> dict[str, np.ndarray]:
        """The B images' checked detection outputs from the backend's ``raw`` answer to a padded batch."""
        where = self.describe()
        rows = max(b, self.min_batch)
        nms = self.spec.nms
        if nms.mode == "none":
            boxes = output_array(raw, "boxes", 3, rows, where)[:b]  # rows past b are the batch's padding
            scores = output_array(raw, "scores", 3, rows, where)[:b]
            check_dense(boxes, scores, len(self.class_names), where)
            # Checked inputs give valid detections: the host's own output needs no second check.
            return self.host_post.detections_from_dense(
                boxes.astype(np.float32, copy=False),
                scores.astype(np.float32, copy=False),
                level_sizes=self.spec.anchors_per_level,
                topk=nms.topk_per_level,
                score_thresh=nms.score_thresh,
                iou_thresh=nms.iou_thresh,
                max_dets=nms.max_dets,
            )
        out = {name: value[:b] for name, value in detection_arrays(raw, rows, where).items()}
        return check_detections(out, len(self.class_names), where)

    def describe(self) -> str:
        """For messages: "<backend name> backend, model <source>"."""
        return f"{getattr(self.backend, 'name', type(self.backend).__name__)} backend, model {self.source}"

    def _to_detections(self, out: dict[str, np.ndarray], chunk: Sequence[PreparedImage]) -> list[Detections]:
        results = []
        for i, p in enumerate(chunk):
            n = int(out["num_dets"][i, 0])
            results.append(
                make_detections(
                    out["boxes"][i, :n],
                    out["scores"][i, :n],
                    out["classes"][i, :n].astype(np.int64),
                    self.class_names,
                    scale=p.scale,
                    orig_hw=p.orig_hw,
                )
            )
        return results

    # ------------------------------------------------------------------ lifecycle

    def close(self) -> None:
        with self._lock:
            self.backend.close()

    def __enter__(self) -> Detector:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _as_list(images: Sequence[ImageInput] | np.ndarray) -> list[ImageInput]:
    """A list of single images from a sequence or a 4-D array; a lone image is an error naming the fix."""
    if isinstance(images, np.ndarray):
        if images.ndim == 4:
            return list(images)
        raise ImageError(
            f"detect() takes a sequence of images or an array [B, h, w, 3], got an array of shape "
            f"{list(images.shape)}; use detect_one() for a single image"
        )
    if isinstance(images, (str, os.PathLike, bytes, bytearray, memoryview)):
        raise ImageError("detect() takes a sequence of images; use detect_one() for a single path or bytes")
    if isinstance(images, (Mapping, Set)):
        raise ImageError(f"detect() takes a sequence of images (list or tuple), got a {type(images).__name__}")
    try:
        return list(images)
    except TypeError as e:
        raise ImageError(f"detect() takes a sequence of images, got {type(images).__name__}") from e
