"""Image decoding shared by /predict and the dataset ingest, so a network sees at prediction time exactly
the pixels it was trained on: decode, turn upright (EXIF), scale 16-bit to 8-bit, put transparency on
black, convert to the dataset's channels, resize to its size. Pillow and NumPy only (no torch)."""

import io
import struct
import warnings
from dataclasses import dataclass
from typing import Literal

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

# What Pillow raises for a damaged file in a format it did recognise, from open() to convert().
# (UnidentifiedImageError, "not an image at all", is an OSError too: it is caught before these.)
DECODE_ERRORS = (OSError, ValueError, SyntaxError, EOFError, struct.error)
# Integer grayscale modes whose samples are 16-bit: convert("L") would clip them at 255, not scale them.
WIDE_GRAY_MODES = frozenset({"I", "I;16", "I;16B", "I;16L", "I;16N"})
# Modes whose pixels carry no colour: a dataset of only these is grayscale (1 channel) by default.
GRAY_MODES = WIDE_GRAY_MODES | {"1", "L", "LA", "La", "F"}

# The formats read: Pillow's other plugins (EPS, PSD, FLI, ...) are more attack surface than use here.
FORMATS = ("PNG", "JPEG", "BMP", "GIF", "TIFF", "WEBP", "PPM")

Rejection = Literal["not_image", "broken", "too_large"]


class ImageRejected(Exception):
    """An upload that is not an image, is damaged, or has too many pixels; `reason` says which."""

    def __init__(self, reason: Rejection, detail: str):
        super().__init__(detail)
        self.reason: Rejection = reason
        self.detail = detail


@dataclass(frozen=True)
class Decoded:
    image: Image.Image  # 8-bit, upright, transparency on black
    gray: bool  # the file's pixels carry no colour


def header_pixels(data: bytes) -> int:
    """Width x height from the file's header, decoding no pixel; 0 for what is not an image (decode says why)."""
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", module=r"PIL\.")
            with Image.open(io.BytesIO(data), formats=FORMATS) as image:
                width, height = image.size
                return width * height
    except (UnidentifiedImageError, Image.DecompressionBombError, *DECODE_ERRORS):
        return 0


def decode(data: bytes, *, name: str, max_pixels: int) -> Decoded:
    """Decode one image file; the pixel count is checked from the header, before any pixel is decoded."""
    try:
        with warnings.catch_warnings():
            # Our pixel limit is stricter than Pillow's bomb warning, and its warnings about damaged
            # metadata only repeat what the decode outcome says anyway.
            warnings.filterwarnings("ignore", module=r"PIL\.")
            image: Image.Image = Image.open(io.BytesIO(data), formats=FORMATS)
            width, height = image.size
            if width * height > max_pixels:
                raise ImageRejected("too_large", f"image {name!r} is {width}x{height} pixels; at most "
                                                 f"{max_pixels} pixels are accepted")
            gray = image.mode in GRAY_MODES
            image.load()
            image = ImageOps.exif_transpose(image)
            return Decoded(_onto_black(_to_8bit(image)), gray)
    except UnidentifiedImageError:
        raise ImageRejected("not_image", f"file {name!r} is not an image Pillow can read: use PNG, JPEG, BMP, "
                                         "GIF, TIFF, WebP or PPM") from None
    except Image.DecompressionBombError as e:
        raise ImageRejected("too_large", f"image {name!r} has too many pixels ({e})") from None
    except DECODE_ERRORS as e:
        raise ImageRejected("broken", f"image {name!r} is broken and cannot be decoded: {e}") from None


def conform(image: Image.Image, *, channels: int, height: int, width: int) -> np.ndarray:
    """The image as uint8 C x H x W: converted to L or RGB, resized (bilinear) when its size differs."""
    image = image.convert("L" if channels == 1 else "RGB")
    if image.size != (width, height):
        image = image.resize((width, height), Image.Resampling.BILINEAR)
    pixels = np.array(image, dtype=np.uint8)  # a writable copy (torch.from_numpy needs one)
    return pixels[None] if pixels.ndim == 2 else pixels.transpose(2, 0, 1)


def _to_8bit(image: Image.Image) -> Image.Image:
    """16-bit grayscale scaled to 0-255 (v / 257, so 257 * v comes back as v); others as they are.

    Mode "I" is read as 16-bit samples too: that is how Pillow opens 16-bit PNG and TIFF files."""
    if image.mode not in WIDE_GRAY_MODES:
        return image
    samples = np.asarray(image, dtype=np.float64)
    return Image.fromarray(np.clip(np.rint(samples / 257), 0, 255).astype(np.uint8))


def _onto_black(image: Image.Image) -> Image.Image:
    """Transparent pixels composited on black, the datasets' background (convert() would drop the
    alpha and show whatever colour the transparent pixels hold)."""
    if not image.has_transparency_data:
        return image
    rgba = image.convert("RGBA")
    return Image.alpha_composite(Image.new("RGBA", rgba.size, (0, 0, 0, 255)), rgba).convert("RGB")
