"""Image loading for training, evaluation and inference (numpy + pillow, torch-free).

Only JPEG, PNG and BMP are accepted, and an image's pixel count is checked from its header before any
pixel data is decoded, so a decompression bomb costs a header parse, not gigabytes of memory. Every
failure is an ``ImageError`` naming the file (or ``<N bytes>`` for in-memory data).

EXIF orientation is applied (as image viewers, torchvision's ``decode_jpeg(apply_exif_orientation=True)``
and Ultralytics' loaders do): a phone photo stored sideways with Orientation=6 is decoded upright, and
every box this toolkit returns is in those upright pixels. ``exif_orientation=False`` keeps the pixels
as stored (for annotations made on stored pixels). An unreadable EXIF block is ignored, as viewers do.
"""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from retina_deploy.core.argcheck import int_at_least
from retina_deploy.core.errors import ConfigError, ImageError

ALLOWED_FORMATS = ("JPEG", "PNG", "BMP")
# Pillow reports a JPEG that carries a multi-picture (MP) extension, as many cameras write, as "MPO".
_FORMAT_ALIASES = {"MPO": "JPEG"}
DEFAULT_MAX_PIXELS = 64_000_000
CHANNEL_ORDERS = ("rgb", "bgr")

ImageSource = str | os.PathLike | bytes


def load_image(
    source: ImageSource,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    channel_order: str = "rgb",
    exif_orientation: bool = True,
) -> np.ndarray:
    """Decode a JPEG, PNG or BMP image into a 3-channel uint8 array.

    Args:
        source: a file path (str or PathLike) or the encoded file's bytes.
        max_pixels: largest accepted width * height, checked from the header before decoding.
        channel_order: "rgb" (default) or "bgr", the channel order of the returned array.
        exif_orientation: turn the pixels upright as the EXIF Orientation tag (1-8) says; False: as stored.

    Returns:
        uint8 array [h, w, 3], C-contiguous, in ``channel_order``. Grayscale, palette and bilevel images
        are expanded to 3 channels, alpha is dropped (not composited), 16-bit grayscale keeps its 8 most
        significant bits. Upright as the EXIF orientation says (h and w swapped for orientations 5-8)
        unless ``exif_orientation`` is False.

    Raises:
        ImageError: the file is missing, empty, truncated or corrupt, of another format, or larger than
            ``max_pixels``; the message names the file.
        ConfigError: ``max_pixels`` or ``channel_order`` is invalid.
    """
    _check_channel_order(channel_order)
    max_pixels = int_at_least("max_pixels", max_pixels, 1)
    name, fp = _open_source(source)
    with fp:
        img = _open_checked(fp, name, max_pixels)
        with img:
            try:
                img.load()
            except Image.DecompressionBombError as e:  # a frame larger than the header announced
                raise ImageError(f"{name}: refused as a decompression bomb: {e}") from e
            except (OSError, SyntaxError, ValueError, EOFError) as e:
                raise ImageError(f"{name}: cannot decode {img.format} image (truncated or corrupt): {e}") from e
            array = _to_rgb_uint8(upright(img) if exif_orientation else img, name)
    if channel_order == "bgr":
        array = np.ascontiguousarray(array[..., ::-1])
    return array


def as_rgb_array(array: np.ndarray, channel_order: str = "rgb") -> np.ndarray:
    """Validate a caller's decoded image and return it in RGB order.

    Args:
        array: uint8 array [h, w, 3] with h, w >= 1.
        channel_order: the order of ``array``'s channels, "rgb" or "bgr" (as OpenCV returns).

    Returns:
        uint8 array [h, w, 3] in RGB order: ``array`` itself for "rgb", a contiguous copy for "bgr".

    Raises:
        ImageError: ``array`` is not a numpy array, not uint8, or not of shape [h, w, 3].
        ConfigError: unknown ``channel_order``.
    """
    _check_channel_order(channel_order)
    if not isinstance(array, np.ndarray):
        raise ImageError(f"image must be a numpy array, got {type(array).__name__}")
    if array.dtype != np.uint8:
        raise ImageError(f"image must have dtype uint8, got {array.dtype} (scale 0-1 floats by 255 and cast)")
    if array.ndim != 3 or array.shape[2] != 3 or array.shape[0] < 1 or array.shape[1] < 1:
        raise ImageError(f"image must have shape [h, w, 3] with h, w >= 1, got {list(array.shape)}")
    if channel_order == "bgr":
        return np.ascontiguousarray(array[..., ::-1])
    return array


def _check_channel_order(channel_order: str) -> None:
    if channel_order not in CHANNEL_ORDERS:
        raise ConfigError(f"channel_order must be one of {list(CHANNEL_ORDERS)}, got {channel_order!r}")


def _open_source(source: ImageSource) -> tuple[str, io.BufferedIOBase]:
    """Return (name for messages, binary file object) for a path or bytes."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
        name = f"<{len(data)} bytes>"
        if not data:
            raise ImageError(f"{name}: empty image data")
        return name, io.BytesIO(data)
    if not isinstance(source, (str, os.PathLike)):
        raise ImageError(f"image source must be a path or bytes, got {type(source).__name__}")
    path = Path(source)
    name = str(path)
    if not path.exists():
        raise ImageError(f"{name}: no such image file")
    if not path.is_file():
        raise ImageError(f"{name}: not a regular file")
    if path.stat().st_size == 0:
        raise ImageError(f"{name}: empty file")
    try:
        return name, open(path, "rb")  # closed by the caller's `with`
    except OSError as e:
        raise ImageError(f"{name}: cannot read: {e}") from e


def _open_checked(fp: io.BufferedIOBase, name: str, max_pixels: int) -> Image.Image:
    """Parse the header only (Image.open is lazy), refuse other formats and oversized images."""
    try:
        # Pillow warns above Image.MAX_IMAGE_PIXELS and raises above twice that; both become ImageError.
        # (catch_warnings is process-global; a race with another thread can at worst leave this one
        # filter installed, which only turns further bomb warnings into errors.)
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(fp, formats=ALLOWED_FORMATS)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageError(f"{name}: refused as a decompression bomb: {e}") from e
    except UnidentifiedImageError as e:
        fmt = _sniff_format(fp)
        if fmt is None:
            raise ImageError(
                f"{name}: unrecognised or corrupt image header (accepted formats: {', '.join(ALLOWED_FORMATS)})"
            ) from e
        raise ImageError(f"{name}: format {fmt} is not accepted; accepted formats: {', '.join(ALLOWED_FORMATS)}") from e
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        raise ImageError(f"{name}: corrupt image header: {e}") from e
    fmt = _FORMAT_ALIASES.get(img.format or "", img.format)
    if fmt not in ALLOWED_FORMATS:  # e.g. Pillow's "DIB" from the BMP plugin
        img.close()
        raise ImageError(f"{name}: format {img.format} is not accepted; accepted formats: {', '.join(ALLOWED_FORMATS)}")
    w, h = img.size
    if w < 1 or h < 1:
        img.close()
        raise ImageError(f"{name}: image has zero size {w}x{h}")
    if w * h > max_pixels:
        img.close()
        raise ImageError(f"{name}: {w}x{h} = {w * h} pixels exceeds the limit of {max_pixels} (max_pixels)")
    return img


def _sniff_format(fp: io.BufferedIOBase) -> str | None:
    """Name the format Pillow detects (header parse only, never decoded) for messages; None if none."""
    try:
        fp.seek(0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(fp) as other:
                return other.format
    except Exception:  # only naming the format; the caller raises ImageError anyway
        return None


# EXIF Orientation -> the transpose that shows the stored pixels as viewers do (TIFF 6.0 / EXIF 2.3: 1 is
# upright; 6 "row 0 is the visual right side" needs a 90 degree clockwise turn, i.e. ROTATE_270).
_ORIENTATION = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_ORIENTATION_TAG = 0x0112


def exif_orientation_of(img: Image.Image) -> int:
    """The EXIF Orientation (1-8) of a decoded image; 1 when absent, out of range or unreadable."""
    try:
        with warnings.catch_warnings():  # Pillow warns "Corrupt EXIF data" on stderr
            warnings.simplefilter("ignore")
            value = img.getexif().get(_ORIENTATION_TAG, 1)
    except Exception:  # noqa: BLE001 - a corrupt EXIF block: shown as stored by viewers, so here too
        return 1
    return value if isinstance(value, int) and value in _ORIENTATION else 1


def upright(img: Image.Image) -> Image.Image:
    """``img`` turned as its EXIF orientation says (``img`` itself for orientation 1)."""
    method = _ORIENTATION.get(exif_orientation_of(img))
    return img if method is None else img.transpose(method)


def _to_rgb_uint8(img: Image.Image, name: str) -> np.ndarray:
    """Convert any decoded mode to uint8 [h, w, 3] RGB."""
    if img.mode.startswith("I"):
        # 16-bit grayscale ("I;16", "I;16B", or "I" holding 0..65535): Pillow's convert() would clip at 255.
        gray = np.asarray(img).astype(np.int64)
        gray = (np.clip(gray, 0, 65535) >> 8).astype(np.uint8)
        return np.ascontiguousarray(np.repeat(gray[..., None], 3, axis=2))
    if img.mode == "F":
        raise ImageError(f"{name}: floating-point image mode 'F' is not supported")
    if img.mode != "RGB":
        img = img.convert("RGB")
    array = np.array(img, dtype=np.uint8)
    if array.ndim != 3 or array.shape[2] != 3:
        raise ImageError(f"{name}: decoded to shape {list(array.shape)}, expected [h, w, 3]")
    return array
