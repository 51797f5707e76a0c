"""Bad inputs through the whole Detector: every case is a typed error naming the input, fast, never a crash.

Images: corrupt, truncated, empty, huge-header, wrong-format files and bytes, wrong arrays.
Model files: foreign, truncated, tampered ONNX files; foreign, tampered, forged engines.
Weight-only edits of an ONNX file cannot be detected (ONNX files carry no signature; engines do).
"""

import struct
import time
import zlib

import numpy as np
import pytest
from testkit.bad_onnx_files import ONNX_CASES, encode_image
from testkit.bad_outputs import CORRUPTIONS
from testkit.detector_models import exported, images
from testkit.serve_fakes import PRE, fake_detector

from retina_deploy.core.errors import ConfigError, ImageError, ModelFileError, ModelOutputError, RetinaDeployError
from retina_deploy.runtime.batching import BatchingDetector
from retina_deploy.runtime.contract.manifest import manifest_path, write_manifest
from retina_deploy.runtime.contract.onnx_metadata import NmsSettings
from retina_deploy.runtime.contract.spec import ModelSpec
from retina_deploy.runtime.detector import Detector
from retina_deploy.runtime.image.image_io import load_image

MAX_SECONDS = 5.0


@pytest.fixture(scope="module")
def detector():
    with Detector.load(exported("onnx"), max_pixels=4_000_000) as det:
        yield det


def _png_chunk(kind, data):
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _png_bomb(width, height):
    """A few hundred bytes whose header claims width x height RGB pixels."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    body = _png_chunk(b"IDAT", zlib.compress(b"\0" * 1000))
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + body + _png_chunk(b"IEND", b"")


IMAGE_FILES = {
    "empty": (b"", "empty"),
    "text": (b"hello, I am not an image\n" * 10, "unrecognised"),
    "truncated_png": (encode_image("PNG", (300, 200))[:200], "truncated|corrupt"),
    "truncated_jpeg": (encode_image("JPEG", (300, 200))[:300], "truncated|corrupt"),
    "corrupt_png_body": (encode_image("PNG")[:40] + b"\xff" * 400, "truncated|corrupt"),
    "jpeg_soi_then_noise": (b"\xff\xd8\xff" + bytes(range(256)) * 4, "corrupt|unrecognised|truncated"),
    "huge_header_png": (_png_bomb(60_000, 60_000), "exceeds the limit|decompression bomb"),
    "wide_header_png": (_png_bomb(2_100_000, 2), "exceeds the limit|decompression bomb"),
    "gif": (encode_image("GIF"), "format GIF is not accepted"),
    "tiff": (encode_image("TIFF"), "format TIFF is not accepted"),
    "webp": (encode_image("WEBP"), "format WEBP is not accepted"),
}


@pytest.mark.parametrize("case", sorted(IMAGE_FILES))
def test_bad_image_files_and_bytes(detector, tmp_path, case):
    data, message = IMAGE_FILES[case]
    path = tmp_path / f"{case}.img"
    path.write_bytes(data)
    sources = [path, str(path)] + ([data] if data else [])
    for source in sources:
        t0 = time.monotonic()
        with pytest.raises(ImageError, match=message) as info:
            detector.detect([images()[0], source])
        assert time.monotonic() - t0 < MAX_SECONDS
        if not isinstance(source, bytes):
            assert str(path) in str(info.value)  # the message names the file
    with pytest.raises(ImageError):
        detector.detect_one(data if data else path)


def test_missing_file_and_directory(detector, tmp_path):
    with pytest.raises(ImageError, match="no such image file"):
        detector.detect([tmp_path / "absent.jpg"])
    with pytest.raises(ImageError, match="not a regular file"):
        detector.detect([tmp_path])


BAD_ARRAYS = {
    "float32": (np.zeros((10, 10, 3), np.float32), "uint8"),
    "bool": (np.zeros((10, 10, 3), bool), "uint8"),
    "gray_2d": (np.zeros((10, 10), np.uint8), r"\[h, w, 3\]"),
    "rgba": (np.zeros((10, 10, 4), np.uint8), r"\[h, w, 3\]"),
    "one_channel": (np.zeros((10, 10, 1), np.uint8), r"\[h, w, 3\]"),
    "zero_height": (np.zeros((0, 10, 3), np.uint8), r"\[h, w, 3\]"),
    "chw_layout": (np.zeros((3, 10, 10), np.uint8), r"\[h, w, 3\]"),
    "too_many_pixels": (np.zeros((2001, 2001, 3), np.uint8), "max_pixels"),
}


@pytest.mark.parametrize("case", sorted(BAD_ARRAYS))
def test_bad_arrays_name_their_position(detector, case):
    array, message = BAD_ARRAYS[case]
    with pytest.raises(ImageError, match=rf"images\[2\].*{message}"):
        detector.detect([images()[0], images()[1], array])


def test_objects_that_are_not_images(detector):
    for obj in (None, 3.5, {"image": 1}, [[1, 2, 3]]):
        with pytest.raises(ImageError, match=r"images\[0\]"):
            detector.detect([obj])


# ---------------------------------------------------------------- ONNX files


@pytest.mark.parametrize("case", sorted(ONNX_CASES))
def test_bad_onnx_files(tmp_path, case):
    make, message = ONNX_CASES[case]
    path = tmp_path / f"{case}.onnx"
    path.write_bytes(make())
    t0 = time.monotonic()
    with pytest.raises(ModelFileError, match=message) as info:
        Detector.load(path)
    assert str(path) in str(info.value)
    assert time.monotonic() - t0 < MAX_SECONDS * 4


# ---------------------------------------------------------------- engine files


def _engine_with_manifest(tmp_path, data: bytes, **overrides):
    path = tmp_path / "model.engine"
    path.write_bytes(data)
    kw = dict(
        flavour="tensorrt-rtx",
        trt_version="1.7.1",
        precision="fp32",
        batch_range=(1, 1, 4),
        input_size=(256, 256),
        onnx_sha256="1" * 64,
        class_names=["a"],
        preprocess={"size": [256, 256]},
        postprocess={"nms": {}, "anchors_per_level": []},
    )
    kw.update(overrides)
    write_manifest(path, **kw)
    return path


def test_foreign_engine_without_manifest(tmp_path):
    path = tmp_path / "foreign.engine"
    path.write_bytes(b"some vendor's engine" * 100)
    with pytest.raises(ModelFileError, match="no manifest .* beside the engine"):
        Detector.load(path)


def test_tampered_engine_and_manifest(tmp_path):
    path = _engine_with_manifest(tmp_path, b"engine" * 1000)
    path.write_bytes(b"Engine" + b"engine" * 999)
    with pytest.raises(ModelFileError, match="sha256 .* differs"):
        Detector.load(path)
    manifest_path(path).write_text(manifest_path(path).read_text()[:-20])
    with pytest.raises(ModelFileError, match="unreadable engine manifest"):
        Detector.load(path)


def test_forged_engine_is_a_typed_error(tmp_path):
    # right sha256, garbage bytes: TensorRT's validity check (GPU) or the missing GPU (here) stops it
    path = _engine_with_manifest(tmp_path, b"\x00forged" * 5000)
    with pytest.raises(RetinaDeployError):
        Detector.load(path, backend="tensorrt-rtx")
    with pytest.raises(RetinaDeployError):
        Detector.load(path, backend="ort-cpu")


# ---------------------------------------------------------------- backend outputs


class _Corrupting:
    """A backend that runs ``inner`` and passes its outputs through ``corrupt``."""

    def __init__(self, inner, corrupt) -> None:
        self.inner, self.corrupt = inner, corrupt
        self.name, self.input_size, self.batch_range = "fake", inner.input_size, inner.batch_range

    def run(self, batch):
        return self.corrupt(self.inner.run(batch))

    def close(self):
        pass


def _grey(*values):
    return [np.full((64, 64, 3), v, np.uint8) for v in values]


@pytest.mark.parametrize("case", sorted(CORRUPTIONS))
def test_bad_backend_outputs_are_typed_errors_naming_backend_and_model(case):
    corrupt, message = CORRUPTIONS[case]
    good = fake_detector(max_batch=4)
    det = Detector(_Corrupting(good.backend, corrupt), good.spec, source="m.onnx")
    with pytest.raises(ModelOutputError, match=rf"^fake backend, model m\.onnx: .*{message}"):
        det.detect(_grey(40, 50))
    assert [len(d) for d in good.detect(_grey(40, 50))] == [1, 1]  # the uncorrupted outputs pass


def test_padding_past_num_dets_is_not_checked():
    """Entries past num_dets are padding: NaN, 0 or ascending there is no error."""

    def pad_garbage(out):
        out = {k: np.array(v) for k, v in out.items()}
        out["boxes"][:, 1] = np.nan
        out["scores"][:, 1] = 5.0
        out["classes"][:, 1] = -3
        return out

    good = fake_detector(max_batch=4)
    det = Detector(_Corrupting(good.backend, pad_garbage), good.spec)
    assert [d.scores.tolist() for d in det.detect(_grey(64, 0))] == [[0.25], []]


def _dense_detector(corrupt):
    """A --nms none model with 4 candidates and 2 classes whose backend answers ``corrupt(boxes, scores)``."""

    class Dense:
        name, input_size, batch_range = "dense-fake", (128, 128), (1, 2)

        def run(self, batch):
            b = batch.shape[0]
            boxes = np.tile(
                np.array([[0, 0, 10, 10], [20, 20, 40, 40], [0, 0, 5, 5], [1, 1, 2, 2]], np.float32), (b, 1, 1)
            )
            scores = np.tile(np.array([[0.9, 0.1], [0.2, 0.8], [0.0, 0.0], [0.3, 0.3]], np.float32), (b, 1, 1))
            return dict(zip(("boxes", "scores"), corrupt(boxes, scores), strict=True))

        def close(self):
            pass

    nms = NmsSettings(mode="none", max_dets=5, score_thresh=0.05, iou_thresh=0.5, topk_per_level=10)
    spec = ModelSpec(class_names=("a", "b"), preprocess=PRE, nms=nms, anchors_per_level=(4,))
    return Detector(Dense(), spec, source="dense.onnx")


def _at(array, index, value):
    array = array.copy()
    array[index] = value
    return array


@pytest.mark.parametrize(
    ("corrupt", "message"),
    [
        (lambda b, s: (b, _at(s, (0, 1, 0), np.nan)), r"dense scores outside \[0, 1\]"),
        (lambda b, s: (b, _at(s, (0, 1, 0), 1.01)), r"dense scores outside \[0, 1\]"),
        (lambda b, s: (_at(b, (0, 3, 0), np.inf), s), "dense boxes hold NaN"),
        (lambda b, s: (b, s[..., :1]), "do not match"),
        (lambda b, s: (b[:, :, :3], s), "do not match"),
        (lambda b, s: (b[:1], s[:1]), "rows"),
    ],
)
def test_bad_dense_outputs_are_typed_errors(corrupt, message):
    with pytest.raises(ModelOutputError, match=rf"^dense-fake backend, model dense\.onnx: .*{message}"):
        _dense_detector(corrupt).detect(_grey(40, 50))
    # uncorrupted: 6 candidates above 0.05, no overlap above IoU 0.5 within a class, max_dets 5
    assert [len(d) for d in _dense_detector(lambda b, s: (b, s)).detect(_grey(40, 50))] == [5, 5]


# ---------------------------------------------------------------- API arguments


@pytest.mark.parametrize("threads", [0, -1, "2", 1.5, True, float("nan"), b"2"])
def test_load_refuses_bad_num_threads_before_loading(threads):
    with pytest.raises(ConfigError, match=r"num_threads must be an integer >= 1"):
        Detector.load(exported("onnx"), num_threads=threads)


@pytest.mark.parametrize("max_pixels", [0, -5, "100", 1e6, True])
def test_load_and_decoders_refuse_bad_max_pixels(max_pixels):
    with pytest.raises(ConfigError, match="max_pixels must be an integer >= 1"):
        Detector.load(exported("onnx"), max_pixels=max_pixels)
    with pytest.raises(ConfigError, match="max_pixels must be an integer >= 1"):
        load_image(encode_image("PNG"), max_pixels=max_pixels)


def test_numpy_integers_are_integers_everywhere():
    with Detector.load(exported("onnx"), max_pixels=np.int64(4_000_000), num_threads=np.int32(1)) as det:
        assert det.max_pixels == 4_000_000 and type(det.max_pixels) is int
        assert load_image(encode_image("PNG"), max_pixels=np.uint32(64 * 48)).shape == (48, 64, 3)
        with BatchingDetector(det, max_batch=np.int64(2), max_queue=np.int16(4)) as batcher:
            assert batcher.max_batch == 2 and batcher.max_queue == 4


@pytest.mark.parametrize(
    ("images", "message"),
    [
        (memoryview(b"\x89PNG not really"), "use detect_one"),
        ({"a.png": 1, "b.png": 2}, "got a dict"),
        ({"a.png", "b.png"}, "got a set"),
        (frozenset({"a.png"}), "got a frozenset"),
        (42, "got int"),
    ],
)
def test_detect_refuses_non_sequences(detector, images, message):
    with pytest.raises(ImageError, match=message):
        detector.detect(images)


@pytest.mark.parametrize("obj", [None, "m.onnx", object(), 3])
def test_batching_detector_needs_a_detector(obj):
    with pytest.raises(ConfigError, match="BatchingDetector needs a Detector"):
        BatchingDetector(obj)
