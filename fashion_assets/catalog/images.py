"""Find and inspect the catalog's product photos. Plain module: no Dagster.

An image is accepted if Pillow can decode it completely and it is in a format the model's decoder
reads (``classifier.images``: JPEG, PNG, GIF, BMP; an MPO, a camera JPEG with a second picture,
is a JPEG to it), whatever its mode (a grayscale JPEG, a CMYK JPEG, a palette PNG saved as
``.jpg``): the bytes are stored as they are and the format and mode are recorded, so downstream
steps convert with ``to_rgb``. It is rejected, with a reason, if it is empty, truncated, not an
image, in another format, or large enough to be a decompression bomb.

``check_image`` is that check, and the only one: the ingest (``inspect_image``) and the online
gateway both call it, so the same bytes get the same verdict in batch and online.
"""

from __future__ import annotations

import io
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw, PngImagePlugin

from .. import layout
from ..core.storage import md5_hex
from .duplicates import perceptual_hash

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
_PRODUCT_FILE = re.compile(r"^(\d+)\.(jpe?g|png)$", re.IGNORECASE)
# 40 megapixels: 10x the largest product photo we have seen; anything bigger is refused before
# it is decoded, so a small hostile file cannot make a step allocate gigabytes.
MAX_PIXELS = 40_000_000
# Pillow's names for the formats ``classifier.images.decode_and_resize`` decodes (tf.io.decode_image).
FORMATS = ("JPEG", "MPO", "PNG", "GIF", "BMP")
EXPECTED = "expected JPEG, PNG, GIF or BMP"
# Start-of-frame markers of arithmetic-coded JPEGs, which can spend less than a bit on a block.
_ARITHMETIC_SOF = re.compile(rb"\xff[\xc9-\xcb\xcd-\xcf]")


@dataclass(frozen=True)
class ImageInfo:
    id: int
    key: str
    width: int
    height: int
    mode: str
    format: str
    bytes: int
    md5: str
    phash: str  # perceptual hash (duplicates.perceptual_hash): near-duplicates have close ones


@dataclass(frozen=True)
class RejectedImage:
    file: str
    reason: str


def find_images(folder: str | Path) -> tuple[list[tuple[int, Path]], list[RejectedImage]]:
    """Product image files (``<id>.jpg``) in ``folder``, sorted by id, and the files that are not.

    Two files for one id (``1.jpg`` and ``1.png``): the first by name wins, the other is rejected.
    """
    found: dict[int, Path] = {}
    rejected: list[RejectedImage] = []
    with os.scandir(folder) as entries:
        names = sorted(e.name for e in entries if e.is_file() and not e.name.startswith("."))
    for name in names:
        match = _PRODUCT_FILE.match(name)
        if not match:
            rejected.append(RejectedImage(name, "file name is not <product id>.jpg"))
            continue
        product_id = int(match.group(1))
        if product_id in found:
            rejected.append(RejectedImage(name, f"another file for product {product_id}: {found[product_id].name}"))
            continue
        found[product_id] = Path(folder, name)
    return sorted(found.items()), rejected


class ImageRejected(ValueError):
    """Why an image is refused; ``kind`` names the rule: ``empty``, ``unreadable`` (not an
    image), ``format``, ``pixels`` (a possible decompression bomb) or ``corrupt``."""

    def __init__(self, reason: str, kind: str = "corrupt"):
        super().__init__(reason)
        self.kind = kind


@dataclass(frozen=True)
class CheckedImage:
    width: int
    height: int
    mode: str
    format: str
    phash: str


def least_jpeg_bytes(img: Image.Image) -> int:
    """The fewest bytes a complete Huffman-coded JPEG of ``img``'s size can take: every 8x8 block
    of every component costs at least one bit (the code of its DC coefficient). A file shorter
    than that is truncated, whatever libjpeg makes of it (it fills what is missing with grey)."""
    width, height = img.size
    sampling = [(h, v) for _, h, v, _ in getattr(img, "layer", [])]
    if not sampling or not all(1 <= h <= 4 and 1 <= v <= 4 for h, v in sampling):
        return 0  # the decoder refuses such a header itself
    h_max, v_max = max(h for h, _ in sampling), max(v for _, v in sampling)
    bits = sum(math.ceil(math.ceil(width * h / h_max) / 8) * math.ceil(math.ceil(height * v / v_max) / 8)
               for h, v in sampling)
    return bits // 8


def check_image(data: bytes) -> CheckedImage:
    """Decode ``data`` fully and describe it; raise :class:`ImageRejected` with a reason. The
    pixel count and a JPEG's length are checked from the header, before anything is decoded."""
    if not data:
        raise ImageRejected("empty file (0 bytes)", "empty")
    try:
        with Image.open(io.BytesIO(data)) as img:
            width, height = img.size
            if img.format not in FORMATS:
                raise ImageRejected(f"{img.format} images are not accepted ({EXPECTED})", "format")
            if width * height > MAX_PIXELS:
                raise ImageRejected(
                    f"{width}x{height} pixels is over the {MAX_PIXELS:,} limit (possible decompression bomb)", "pixels"
                )
            if img.format in ("JPEG", "MPO") and not _ARITHMETIC_SOF.search(data) \
                    and len(data) < least_jpeg_bytes(img):
                raise ImageRejected(f"corrupt image: truncated ({len(data):,} bytes cannot hold the "
                                    f"{width}x{height} pixels its header declares)")
            img.load()  # a header alone is not an image: this catches truncated files
            return CheckedImage(width, height, img.mode, img.format, perceptual_hash(img))
    except ImageRejected:
        raise
    except Image.DecompressionBombError as exc:
        raise ImageRejected(f"possible decompression bomb: {exc}", "pixels") from None
    except Image.UnidentifiedImageError:
        raise ImageRejected(f"not an image ({EXPECTED})", "unreadable") from None
    except (OSError, SyntaxError, ValueError) as exc:
        # Pillow reports truncated and corrupt data as OSError ("image file is truncated"),
        # and some broken headers as SyntaxError.
        raise ImageRejected(f"corrupt image: {exc}") from None


def inspect_image(product_id: int, data: bytes) -> ImageInfo:
    """``check_image``, and what the catalog records of an accepted image."""
    checked = check_image(data)
    return ImageInfo(id=product_id, key=layout.catalog_image(product_id), width=checked.width,
                     height=checked.height, mode=checked.mode, format=checked.format, bytes=len(data),
                     md5=md5_hex(data), phash=checked.phash)


def to_rgb(img: Image.Image) -> Image.Image:
    """Any accepted image as 8-bit RGB (grayscale, CMYK, palette and alpha included)."""
    if img.mode == "RGB":
        return img
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        # Composite on white, the background of product photos, instead of dropping alpha to black.
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def thumbnail_sheet(rows: list[list[tuple[str | None, bytes]]], thumb: int = 112,
                    chunks: dict[str, str] | None = None) -> bytes:
    """A PNG grid of thumbnails, one row per list, each with an optional caption under it;
    ``chunks`` go into the PNG's text chunks (what the sheet was drawn from)."""
    columns = max((len(r) for r in rows), default=0)
    caption = 14 if any(text for row in rows for text, _ in row) else 0
    cell_h = thumb + 4 + caption
    sheet = Image.new("RGB", (columns * (thumb + 4) + 4, len(rows) * cell_h + 4), (235, 235, 235))
    draw = ImageDraw.Draw(sheet)
    for r, row in enumerate(rows):
        for c, (text, data) in enumerate(row):
            x, y = 4 + c * (thumb + 4), 4 + r * cell_h
            with Image.open(io.BytesIO(data)) as img:
                tile = to_rgb(img)
                tile.thumbnail((thumb, thumb))
                sheet.paste(tile, (x, y))
            if text:
                draw.text((x + 2, y + thumb + 1), text[:18], fill="black")
    buffer = io.BytesIO()
    info = PngImagePlugin.PngInfo()
    for key, value in (chunks or {}).items():
        info.add_text(key, value)
    sheet.save(buffer, "PNG", optimize=True, pnginfo=info)
    return buffer.getvalue()


def png_text(data: bytes) -> dict[str, str]:
    """The text chunks before a PNG's pixels (``thumbnail_sheet`` writes its ``chunks`` there),
    read without decoding the pixels; {} for anything that is not a readable PNG."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            if img.format != "PNG":
                return {}
            return {k: v for k, v in img.info.items() if isinstance(k, str) and isinstance(v, str)}
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError):
        return {}
