"""The augmentation module: spec validation, determinism, variety, odd image modes."""

import io

import pytest
from PIL import Image

from fashion_assets.augmented_sets.augment import (
    DEFAULT_SPEC,
    SpecError,
    augment_image,
    augment_in_parallel,
    build_pipeline,
    contact_sheet,
    normalize_spec,
    spec_hash,
)

from .catalog_files import image_bytes


def photo(product_id: int) -> bytes:
    """A 64x64 image with structure (flips and shifts must change it)."""
    img = Image.new("RGB", (64, 64), "white")
    for x in range(8, 40):
        for y in range(10, 30 + product_id % 20):
            img.putpixel((x, y), (200, (x * 7) % 255, (y * 5) % 255))
    buffer = io.BytesIO()
    img.save(buffer, "JPEG")
    return buffer.getvalue()


@pytest.mark.parametrize(
    "spec, message",
    [
        ([{"NoSuchTransform": {}}], "'NoSuchTransform' is not an albumentations transform"),
        ([{"HorizontalFlip": {"probability": 0.5}}], "unknown parameter(s) probability"),
        ([{"HorizontalFlip": {"p": 5}}], "p: Input should be less than or equal to 1"),
        ([{"Affine": {"rotate": "a lot"}}], "step 1 (Affine): bad parameters"),
        ([{"HorizontalFlip": {}}, {"Compose": {}}], "step 2: 'Compose' is not an albumentations transform"),
        ("HorizontalFlip", "must be a list"),
        ([{"HorizontalFlip": {}, "VerticalFlip": {}}], "expected one {TransformName"),
    ],
)
def test_bad_specs_are_refused_with_the_reason(spec, message):
    with pytest.raises(SpecError) as error:
        build_pipeline(spec)
    assert message in str(error.value)


def test_a_mapping_spec_is_the_same_as_a_list():
    as_map = {"HorizontalFlip": {"p": 0.5}, "Affine": {"rotate": [-15, 15]}}
    assert normalize_spec(as_map) == [{"HorizontalFlip": {"p": 0.5}}, {"Affine": {"rotate": [-15, 15]}}]
    assert spec_hash(as_map, 1) == spec_hash(normalize_spec(as_map), 1) != spec_hash(as_map, 2)


def test_same_seed_same_bytes_whoever_computes_them():
    jobs = [(i, photo(i)) for i in range(1, 9)]
    parallel = dict(augment_in_parallel(jobs, DEFAULT_SPEC, variants=3, seed=7, workers=2, chunk_size=3))
    again = dict(augment_in_parallel(list(reversed(jobs)), DEFAULT_SPEC, variants=3, seed=7, workers=1))
    pipeline = build_pipeline(DEFAULT_SPEC)
    inline = {i: augment_image(pipeline, data, i, 3, 7) for i, data in jobs}
    assert parallel == again == inline


def test_different_seed_or_variant_gives_different_images():
    data = photo(3)
    pipeline = build_pipeline(DEFAULT_SPEC)
    seed_1, seed_2 = augment_image(pipeline, data, 3, 4, 1), augment_image(pipeline, data, 3, 4, 2)
    assert seed_1 != seed_2
    assert len(set(seed_1)) == 4  # the variants of one image differ from each other


@pytest.mark.parametrize("mode, fmt", [("L", "JPEG"), ("CMYK", "JPEG"), ("P", "PNG"), ("RGBA", "PNG")])
def test_every_accepted_image_mode_augments_to_rgb_jpeg(mode, fmt):
    [out] = augment_image(build_pipeline(DEFAULT_SPEC), image_bytes(1, mode=mode, fmt=fmt), 1, 1, 0)
    with Image.open(io.BytesIO(out)) as img:
        assert (img.format, img.mode, img.size) == ("JPEG", "RGB", (48, 64))


def test_contact_sheet_is_a_png_with_a_row_per_image():
    sheet = contact_sheet([(photo(1), [photo(2), photo(3)]), (photo(4), [photo(5), photo(6)])], thumb=50)
    with Image.open(io.BytesIO(sheet)) as img:
        assert img.format == "PNG" and img.size == (3 * 54 + 4, 2 * 54 + 4)
