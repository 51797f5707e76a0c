"""The C++ tools' image decoding (runtime/cpp/tools/image_file.cpp, used by retina_infer) against the Python
runtime's load_image: the same upright pixels for every EXIF orientation 1-8, JPEG and PNG."""

import io
import subprocess

import numpy as np
import pytest
from cpp_build import build_target
from PIL import Image

from retina_deploy.runtime.image.image_io import load_image


@pytest.fixture(scope="module")
def retina_decode():
    return build_target("retina_decode")


def _stored_with_orientation(fmt: str, orientation: int) -> bytes:
    """A 30 wide, 18 high picture of distinct blocks, saved turned so that ``orientation`` shows it upright."""
    rng = np.random.default_rng(orientation)
    blocks = rng.integers(0, 256, size=(3, 5, 3), dtype=np.uint8)
    upright = np.kron(blocks, np.ones((6, 6, 1), np.uint8))  # 6x6 px flat blocks: JPEG keeps them close
    inverse = {2: "FLIP_LEFT_RIGHT", 3: "ROTATE_180", 4: "FLIP_TOP_BOTTOM", 5: "TRANSPOSE", 6: "ROTATE_90",
               7: "TRANSVERSE", 8: "ROTATE_270"}  # fmt: skip
    img = Image.fromarray(upright)
    if orientation in inverse:
        img = img.transpose(getattr(Image.Transpose, inverse[orientation]))
    exif = Image.Exif()
    exif[0x0112] = orientation
    buf = io.BytesIO()
    img.save(buf, format=fmt, exif=exif.tobytes(), **({"quality": 95} if fmt == "JPEG" else {}))
    return buf.getvalue()


def _decode(tool, path, tmp_path):
    raw = tmp_path / "out.raw"
    done = subprocess.run([str(tool), str(path), str(raw)], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    w, h, orientation = map(int, done.stdout.split())
    return np.fromfile(raw, np.uint8).reshape(h, w, 3), orientation


@pytest.mark.parametrize("orientation", range(1, 9))
@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_cpp_decoding_applies_exif_orientation_like_python(retina_decode, tmp_path, fmt, orientation):
    path = tmp_path / f"o{orientation}.{fmt.lower()}"
    path.write_bytes(_stored_with_orientation(fmt, orientation))
    got, tag = _decode(retina_decode, path, tmp_path)
    want = load_image(path)
    assert tag == orientation and got.shape == want.shape == (18, 30, 3)
    if fmt == "PNG":
        np.testing.assert_array_equal(got, want)
    else:  # stb and libjpeg decode the same file to within a few levels (IDCT and chroma upsampling differ)
        assert np.abs(got.astype(int) - want).mean() < 3


def test_cpp_decoding_ignores_a_malformed_exif_block(retina_decode, tmp_path):
    pixels = np.arange(4 * 6 * 3, dtype=np.uint8).reshape(4, 6, 3)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG", exif=b"Exif\x00\x00MM\x00*\x00\x00\x00\x08\xff\xff")
    path = tmp_path / "bad_exif.png"
    path.write_bytes(buf.getvalue())
    got, tag = _decode(retina_decode, path, tmp_path)
    assert tag == 1
    np.testing.assert_array_equal(got, pixels)
    np.testing.assert_array_equal(load_image(path), pixels)
