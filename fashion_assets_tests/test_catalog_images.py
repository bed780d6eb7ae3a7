import io

import pytest
from PIL import Image

from fashion_assets.catalog.images import ImageRejected, find_images, inspect_image, to_rgb

from .catalog_files import decompression_bomb, image_bytes, truncated_jpeg


@pytest.mark.parametrize(
    "data, fmt, mode",
    [
        (image_bytes(1), "JPEG", "RGB"),
        (image_bytes(2, mode="L"), "JPEG", "L"),
        (image_bytes(3, mode="CMYK"), "JPEG", "CMYK"),
        (image_bytes(4, mode="P", fmt="PNG"), "PNG", "P"),
        (image_bytes(5, mode="RGBA", fmt="PNG"), "PNG", "RGBA"),
    ],
)
def test_readable_images_are_accepted_as_they_are(data, fmt, mode):
    info = inspect_image(7, data)
    assert (info.format, info.mode, info.width, info.height) == (fmt, mode, 48, 64)
    assert info.key == "catalog/images/7.jpg" and info.bytes == len(data) and len(info.md5) == 32
    rgb = to_rgb(Image.open(io.BytesIO(data)))
    assert rgb.mode == "RGB" and rgb.size == (48, 64)


@pytest.mark.parametrize(
    "data, reason",
    [
        (b"", "empty file"),
        (truncated_jpeg(1), "corrupt image"),
        (b"this is not an image\n", "not an image"),
        (decompression_bomb(), "decompression bomb"),
    ],
)
def test_unreadable_images_are_rejected_with_a_reason(data, reason):
    with pytest.raises(ImageRejected, match=reason):
        inspect_image(1, data)


def test_transparent_images_become_white_not_black():
    rgb = to_rgb(Image.open(io.BytesIO(image_bytes(1, mode="RGBA", fmt="PNG"))))
    r, g, b = rgb.getpixel((0, 0))
    assert r > 200 and g > 100 and b > 100  # red at half opacity over white


def test_find_images_lists_files_that_are_not_product_images(tmp_path):
    for name in ["2.jpg", "1.JPEG", "1.png", "notes.txt", "x1.jpg", ".hidden.jpg"]:
        (tmp_path / name).write_bytes(b"x")
    found, rejected = find_images(tmp_path)
    assert [(i, p.name) for i, p in found] == [(1, "1.JPEG"), (2, "2.jpg")]
    assert {r.file: r.reason for r in rejected} == {
        "1.png": "another file for product 1: 1.JPEG",
        "notes.txt": "file name is not <product id>.jpg",
        "x1.jpg": "file name is not <product id>.jpg",
    }
