"""Image loading: accepted formats, refused formats, corrupt files, pixel limit, mode conversion."""

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from retina_deploy.core.errors import ConfigError, ImageError
from retina_deploy.runtime.image.image_io import as_rgb_array, load_image


def _rgb(h=12, w=20, seed=0):
    return np.random.default_rng(seed).integers(0, 256, size=(h, w, 3), dtype=np.uint8)


def _encode(array_or_image, fmt, **kw):
    img = array_or_image if isinstance(array_or_image, Image.Image) else Image.fromarray(array_or_image)
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose IHDR claims width x height but whose pixel data is 10 zero bytes."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", zlib.compress(b"\0" * 10))
        + _png_chunk(b"IEND", b"")
    )


@pytest.mark.parametrize("fmt", ["PNG", "BMP"])
def test_lossless_formats_round_trip_from_path_and_bytes(tmp_path, fmt):
    pixels = _rgb()
    data = _encode(pixels, fmt)
    path = tmp_path / f"x.{fmt.lower()}"
    path.write_bytes(data)
    for source in (path, str(path), data):
        out = load_image(source)
        assert out.dtype == np.uint8 and out.shape == (12, 20, 3) and out.flags.c_contiguous
        np.testing.assert_array_equal(out, pixels)


def test_jpeg_loads_close_to_original(tmp_path):
    pixels = np.full((16, 24, 3), (200, 40, 90), np.uint8)  # flat colour: JPEG error stays small
    path = tmp_path / "x.jpg"
    path.write_bytes(_encode(pixels, "JPEG", quality=95))
    out = load_image(path)
    assert out.shape == (16, 24, 3)
    assert np.abs(out.astype(int) - pixels).max() <= 4


def test_bgr_channel_order():
    pixels = _rgb()
    out = load_image(_encode(pixels, "PNG"), channel_order="bgr")
    np.testing.assert_array_equal(out, pixels[..., ::-1])
    with pytest.raises(ConfigError, match="'gbr'"):
        load_image(_encode(pixels, "PNG"), channel_order="gbr")


@pytest.mark.parametrize("fmt", ["GIF", "TIFF", "WEBP"])
def test_other_formats_refused_naming_file_and_format(tmp_path, fmt):
    path = tmp_path / "x.img"
    path.write_bytes(_encode(_rgb(), fmt))
    with pytest.raises(ImageError, match=rf"x\.img: format {fmt} is not accepted"):
        load_image(path)


def test_text_file_refused(tmp_path):
    path = tmp_path / "notes.png"
    path.write_text("this is not an image\n")
    with pytest.raises(ImageError, match=r"notes\.png: unrecognised or corrupt"):
        load_image(path)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_truncated_file_refused_naming_file(tmp_path, fmt):
    data = _encode(_rgb(64, 64), fmt)
    path = tmp_path / "cut.bin"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageError, match=r"cut\.bin: cannot decode .*truncated"):
        load_image(path)


def test_empty_and_missing_files(tmp_path):
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(ImageError, match=r"empty\.png: empty file"):
        load_image(tmp_path / "empty.png")
    with pytest.raises(ImageError, match=r"nope\.png: no such image file"):
        load_image(tmp_path / "nope.png")
    with pytest.raises(ImageError, match="empty image data"):
        load_image(b"")
    with pytest.raises(ImageError, match="not a regular file"):
        load_image(tmp_path)


def test_pixel_limit_checked_from_header_before_decoding():
    # 9000 x 9000 = 81e6 > 64e6 (our default) but < Pillow's own 89e6: our check must refuse it. The
    # file holds no real pixel data, so a decode attempt would have reported truncation instead.
    with pytest.raises(ImageError, match="9000x9000 = 81000000 pixels exceeds the limit of 64000000"):
        load_image(_png_header_only(9000, 9000))
    # above Pillow's thresholds its DecompressionBombWarning/Error also become ImageError
    for side in (10_000, 100_000):
        with pytest.raises(ImageError, match="decompression bomb"):
            load_image(_png_header_only(side, side), max_pixels=10**12)
    # a small limit on a real image
    with pytest.raises(ImageError, match="20x12 = 240 pixels exceeds the limit of 239"):
        load_image(_encode(_rgb(), "PNG"), max_pixels=239)
    assert load_image(_encode(_rgb(), "PNG"), max_pixels=240).shape == (12, 20, 3)
    with pytest.raises(ConfigError, match="max_pixels"):
        load_image(_encode(_rgb(), "PNG"), max_pixels=0)


def test_grayscale_rgba_palette_bilevel_converted():
    gray = np.arange(12 * 20, dtype=np.uint8).reshape(12, 20)
    out = load_image(_encode(gray, "PNG"))
    np.testing.assert_array_equal(out, np.repeat(gray[..., None], 3, axis=2))

    rgba = np.dstack([_rgb(), np.full((12, 20), 7, np.uint8)])
    np.testing.assert_array_equal(load_image(_encode(rgba, "PNG")), rgba[..., :3])  # alpha dropped

    palette_img = Image.fromarray(_rgb()).quantize(colors=8)
    expected = np.asarray(palette_img.convert("RGB"))
    np.testing.assert_array_equal(load_image(_encode(palette_img, "PNG")), expected)
    np.testing.assert_array_equal(load_image(_encode(palette_img, "BMP")), expected)

    bilevel = Image.fromarray(gray > 100)
    out = load_image(_encode(bilevel, "PNG"))
    np.testing.assert_array_equal(out[..., 0], np.where(gray > 100, 255, 0))


def test_16bit_grayscale_keeps_high_byte():
    values = np.array([[0, 255, 256, 0x1234, 0xFFFF]], np.uint16)
    out = load_image(_encode(Image.fromarray(values), "PNG"))
    assert out.dtype == np.uint8 and out.shape == (1, 5, 3)
    np.testing.assert_array_equal(out[0, :, 0], [0, 0, 1, 0x12, 0xFF])
    np.testing.assert_array_equal(out[..., 0], out[..., 2])


def test_as_rgb_array_validates_and_converts():
    pixels = _rgb()
    assert as_rgb_array(pixels) is pixels
    bgr = as_rgb_array(pixels, channel_order="bgr")
    np.testing.assert_array_equal(bgr, pixels[..., ::-1])
    assert bgr.flags.c_contiguous
    with pytest.raises(ImageError, match="dtype uint8, got float32"):
        as_rgb_array(pixels.astype(np.float32))
    with pytest.raises(ImageError, match=r"shape \[h, w, 3\].*got \[12, 20\]"):
        as_rgb_array(pixels[..., 0])
    with pytest.raises(ImageError, match=r"got \[12, 20, 4\]"):
        as_rgb_array(np.zeros((12, 20, 4), np.uint8))
    with pytest.raises(ImageError, match=r"got \[0, 20, 3\]"):
        as_rgb_array(np.zeros((0, 20, 3), np.uint8))
    with pytest.raises(ImageError, match="numpy array, got list"):
        as_rgb_array([[1, 2, 3]])
    with pytest.raises(ConfigError, match="channel_order"):
        as_rgb_array(pixels, channel_order="RGB")


# ---------------------------------------------------------------- EXIF orientation

# Orientation o -> how a camera stores an upright picture U: the inverse of the turn a viewer applies
# (EXIF 2.3, tag 0x0112: 6 = "row 0 is the visual right side", shown after a 90 degree clockwise turn,
# so the camera stored U turned 90 degrees counter-clockwise; 5 and 7 are the two diagonal mirrors).
STORED = {
    1: lambda u: u,
    2: lambda u: u[:, ::-1],
    3: lambda u: u[::-1, ::-1],
    4: lambda u: u[::-1],
    5: lambda u: u.transpose(1, 0, 2),
    6: lambda u: np.rot90(u, 1),  # counter-clockwise
    7: lambda u: np.rot90(u, 2).transpose(1, 0, 2),
    8: lambda u: np.rot90(u, -1),  # clockwise
}


def _upright():
    """40x60 upright picture: a bright top-left block, a mid-grey bottom-right one, so every turn differs."""
    u = np.full((40, 60, 3), 20, np.uint8)
    u[:16, :24] = (230, 40, 40)
    u[24:, 36:] = (60, 160, 220)
    return u


def _with_orientation(fmt: str, orientation: int, upright: np.ndarray) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    stored = np.ascontiguousarray(STORED[orientation](upright))
    kw = {"quality": 95} if fmt == "JPEG" else {}
    return _encode(stored, fmt, exif=exif.tobytes(), **kw)


@pytest.mark.parametrize("orientation", range(1, 9))
@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_exif_orientation_gives_the_upright_picture(orientation, fmt):
    u = _upright()
    data = _with_orientation(fmt, orientation, u)
    with Image.open(io.BytesIO(data)) as check:  # the file really carries the tag
        assert check.getexif()[0x0112] == orientation
    got = load_image(data)
    assert got.shape == u.shape
    if fmt == "PNG":
        np.testing.assert_array_equal(got, u)
    else:  # JPEG at quality 95: blocks of flat colour come back within a few levels, edges aside
        assert np.median(np.abs(got.astype(int) - u)) <= 2 and np.mean(np.abs(got.astype(int) - u)) < 6
    stored = load_image(data, exif_orientation=False)
    assert stored.shape == STORED[orientation](u).shape


@pytest.mark.parametrize("value", [0, 9, 255])
def test_exif_orientation_out_of_range_is_ignored(value):
    u = _upright()
    exif = Image.Exif()
    exif[0x0112] = value
    np.testing.assert_array_equal(load_image(_encode(u, "PNG", exif=exif.tobytes())), u)


def test_corrupt_exif_block_is_ignored_like_viewers_do():
    u = _upright()
    data = _encode(u, "PNG", exif=b"Exif\x00\x00MM\x00*\x00\x00\x00\x08\xff\xff")  # IFD count beyond the data
    np.testing.assert_array_equal(load_image(data), u)


@pytest.mark.parametrize("orientation", [1, 3, 6, 8])
def test_detector_boxes_are_in_upright_pixels(orientation):
    """The fake model answers one box over the input's top-left 64x64 px, scored by the top-left pixel.
    For an upright picture 100 wide, 20 high (scale 1.28) that is 0..50 x 0..20 (clipped) with the red
    corner's score, whatever turn the file stores; stored pixels would give 0..20 x 0..50 or another score."""
    from testkit.serve_fakes import fake_detector

    u = np.full((20, 100, 3), 20, np.uint8)
    u[:5, :5] = (230, 0, 0)
    (dets,) = fake_detector().detect([_with_orientation("PNG", orientation, u)])
    assert dets.scores.tolist() == pytest.approx([230 / 256])
    np.testing.assert_allclose(dets.boxes, [[0, 0, 50, 20]], atol=1e-4)
