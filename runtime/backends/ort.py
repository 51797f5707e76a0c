"""ONNX Runtime backend for exported retina-deploy files (torch-free).

``OnnxModel.load(path)`` reads the file's metadata (class names, preprocessing, NMS settings,
batch range); ``run`` returns the graph's outputs (``efficient`` files run the plugin's CPU
reference op). Turning outputs into detections is the ``Detector``'s job, for every backend.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnxruntime as ort

from retina_deploy.core.errors import ModelFileError
from retina_deploy.runtime.backends import ort_efficient_nms
from retina_deploy.runtime.contract.onnx_metadata import INPUT_NAME, OnnxMetadata
from retina_deploy.runtime.contract.spec import check_images, run_in_chunks

_ORT_LOAD_ERRORS = tuple(
    getattr(ort.capi.onnxruntime_pybind11_state, name)
    for name in ("InvalidProtobuf", "InvalidGraph", "Fail", "NoSuchFile", "NotImplemented", "InvalidArgument")
)


class OnnxModel:
    """An exported file in an ONNX Runtime session.

    Attributes:
        metadata: the file's ``OnnxMetadata``.
        path: where it was loaded from.
        session: the ``onnxruntime.InferenceSession``.
    """

    def __init__(self, session: ort.InferenceSession, metadata: OnnxMetadata, path: Path) -> None:
        self.session = session
        self.metadata = metadata
        self.path = path
        self._output_names = [o.name for o in session.get_outputs()]

    @classmethod
    def load(
        cls,
        path: str | os.PathLike,
        providers: Sequence[str] | None = None,
        *,
        threads: int | None = None,
    ) -> OnnxModel:
        """Open a retina-deploy ONNX file (no external data is ever loaded).

        Args:
            path: the ``.onnx`` file written by ``export_onnx`` (or a later precision stage).
            providers: ONNX Runtime execution providers; default CPU.
            threads: intra-op threads (default: ONNX Runtime's choice).

        Raises ModelFileError for a missing, truncated or foreign file, and for an ``efficient``
        file where ``onnxruntime-extensions`` is not installed.
        """
        path = Path(path)
        if not path.is_file():
            raise ModelFileError(f"{path}: no such ONNX file")
        data = path.read_bytes()
        options = ort.SessionOptions()
        # Worker threads keep ONNX Runtime's default and spin while they wait: on an idle CPU that is 1.1-1.3x
        # faster compute; sleeping wins only while other processes want the cores (BENCHMARKS.md, "CPU backends").
        if threads is not None:
            options.intra_op_num_threads = threads
        if ort_efficient_nms.has_efficient_nms(data):
            data = _reference_model(data, options, path)
        try:
            # From bytes: a file that points at external data fails here instead of reading it.
            session = ort.InferenceSession(data, options, providers=list(providers or ["CPUExecutionProvider"]))
        except _ORT_LOAD_ERRORS as e:
            raise ModelFileError(f"{path}: not a loadable ONNX file, truncated or of another format ({e})") from e
        metadata = OnnxMetadata.from_props(session.get_modelmeta().custom_metadata_map, str(path))
        model = cls(session, metadata, path)
        model._check_signature()
        return model

    def _check_signature(self) -> None:
        inputs = self.session.get_inputs()
        h, w = self.metadata.input_size
        if len(inputs) != 1 or inputs[0].name != INPUT_NAME or list(inputs[0].shape[1:]) != [3, h, w]:
            got = [(i.name, i.shape) for i in inputs]
            raise ModelFileError(f"{self.path}: inputs {got} do not match the metadata's images [B, 3, {h}, {w}]")
        if tuple(self._output_names) != self.metadata.output_names:
            expected = list(self.metadata.output_names)
            raise ModelFileError(f"{self.path}: outputs {self._output_names} do not match the metadata's {expected}")

    @property
    def max_batch(self) -> int:
        return self.metadata.batch[2]

    def run(self, images: np.ndarray) -> dict[str, np.ndarray]:
        """The graph's outputs for ``images`` float32 [B, 3, H, W] (preprocessed), any B >= 1.

        Batches above the file's MAX batch run in chunks of MAX. Outputs: see ``export_onnx``.
        """
        check_images(images, self.metadata.input_size)
        return run_in_chunks(
            lambda chunk: self.session.run(self._output_names, {INPUT_NAME: chunk}),
            images,
            self.max_batch,
            self._output_names,
        )


def _reference_model(data: bytes, options: ort.SessionOptions, path: Path) -> bytes:
    """Swap the TensorRT plugin for the CPU reference op (registered in ``options``)."""
    try:
        options.register_custom_ops_library(ort_efficient_nms.register_efficient_nms_op())
        return ort_efficient_nms.to_reference_model(data)
    except ImportError as e:
        raise ModelFileError(
            f"{path}: its EfficientNMS_TRT node is a TensorRT plugin; ONNX Runtime runs it only through the CPU"
            f" reference, which needs `pip install onnxruntime-extensions onnx` ({e})"
        ) from e
