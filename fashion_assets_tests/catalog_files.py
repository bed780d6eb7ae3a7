"""Catalog files the tests generate: styles.csv in the Kaggle (unquoted) format, and images that
are good, odd but readable, or broken."""

from __future__ import annotations

import io
from pathlib import Path

from PIL import Image

HEADER = "id,gender,masterCategory,subCategory,articleType,baseColour,season,year,usage,productDisplayName"
CATEGORIES = [
    ("Men", "Apparel", "Topwear", "Tshirts", "Blue"),
    ("Women", "Apparel", "Bottomwear", "Jeans", "Black"),
    ("Women", "Footwear", "Shoes", "Heels", "Red"),
    ("Men", "Accessories", "Watches", "Watches", "Silver"),
]


def product_line(product_id: int, name: str | None = None, year: str = "2012", season: str = "Summer") -> str:
    gender, master, sub, article, colour = CATEGORIES[product_id % len(CATEGORIES)]
    name = name if name is not None else f"Brand {gender} {colour} {article} {product_id}"
    return f"{product_id},{gender},{master},{sub},{article},{colour},{season},{year},Casual,{name}"


def write_styles(path: Path, lines: list[str], bom: bool = False, crlf: bool = False) -> Path:
    eol = "\r\n" if crlf else "\n"
    text = eol.join([HEADER, *lines]) + eol
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + text.encode("utf-8"))
    return path


def image_bytes(product_id: int, mode: str = "RGB", fmt: str = "JPEG", size: tuple[int, int] = (48, 64)) -> bytes:
    colour = {"RGB": (product_id % 256, 80, 160), "L": product_id % 256, "CMYK": (10, 200, 30, 5), "P": 3,
              "RGBA": (200, 10, 10, 128)}[mode]
    img = Image.new(mode, size, colour)
    buffer = io.BytesIO()
    img.save(buffer, fmt)
    return buffer.getvalue()


def truncated_jpeg(product_id: int) -> bytes:
    data = image_bytes(product_id, size=(200, 200))
    return data[: len(data) // 2]


def decompression_bomb() -> bytes:
    # 64 megapixels of one colour: a few kilobytes as a 1-bit PNG, 192 MB once decoded to RGB.
    buffer = io.BytesIO()
    Image.new("1", (8000, 8000)).save(buffer, "PNG")
    return buffer.getvalue()


def make_dataset(root: Path, n_products: int = 12) -> Path:
    """A small catalog with every kind of trouble the ingest must survive.

    Products 1..n (n=12): 1..6 have ordinary RGB JPEGs; 7 grayscale, 8 CMYK, 9 a PNG named .jpg;
    10 a truncated JPEG, 11 zero bytes, 12 a text file named .jpg. Image 99 has no product.
    styles.csv has a BOM, CRLF, a blank line, an unquoted comma in a name, an empty season, a
    bad year, a duplicate id, a short row and a non-numeric id.
    """
    root.mkdir(parents=True, exist_ok=True)
    lines = [product_line(i) for i in range(1, n_products + 1)]
    lines[2] = product_line(3, name="Nike Men, Women Unisex Cap")  # unquoted comma, like Kaggle
    lines[3] = product_line(4, season="")
    lines[4] = product_line(5, year="n/a")
    lines += ["", product_line(2, name="duplicate of 2"), "13,Men,Apparel", product_line(0).replace("0,", "abc,", 1)]
    write_styles(root / "styles.csv", lines, bom=True, crlf=True)

    images = root / "images"
    images.mkdir()
    for i in range(1, 7):
        (images / f"{i}.jpg").write_bytes(image_bytes(i))
    (images / "7.jpg").write_bytes(image_bytes(7, mode="L"))
    (images / "8.jpg").write_bytes(image_bytes(8, mode="CMYK"))
    (images / "9.jpg").write_bytes(image_bytes(9, mode="P", fmt="PNG"))
    (images / "10.jpg").write_bytes(truncated_jpeg(10))
    (images / "11.jpg").write_bytes(b"")
    (images / "12.jpg").write_text("this is not an image\n")
    (images / "99.jpg").write_bytes(image_bytes(99))
    return root
