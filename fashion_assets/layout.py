"""Every object-store key and prefix the project reads or writes, and nothing else.

The layout is a contract: people, notebooks, TF Serving and other services read these paths, so
it changes only here, and no other module builds a key from string pieces
(``fashion_assets_tests/test_layout.py`` checks that). Keys are relative to the store's root (a
folder, or ``s3://bucket/prefix``)::

    catalog/images/<id>.jpg                              product_images
    catalog/reports/{products,product_images}_rejected.csv
    queries/<name>.sql                                   one image set per query
    image-sets/<name>/images/<id>[-<md5>].jpg            image_set's photos, each written once (versions share them)
    image-sets/<name>/versions/<seq>-<digest>/{manifest.parquet,version.json}   one immutable set version
    image-sets/<name>/manifest.parquet                   a copy of the newest version's manifest (written last)
    image-sets/<name>/augmented/<spec-hash>/<id>_<k>.jpg augmented_set
    image-sets/<name>/augmented/<spec-hash>/{manifest.parquet,contact_sheet.png}
    image-sets/<name>/augmented/LATEST                   the newest spec hash
    image-sets/<name>/predictions.parquet                predictions
    image-sets/<name>/contact_sheet.png                  image_set's thumbnails
    image-sets/<name>/disagreements.png                  predictions' label-error candidates
    models/fashion_classifier/<version>/{model.keras,labels.json,saved_model/,confusion_article_type.png}
    models/fashion_classifier/LATEST                     the newest version
    models/inputs/<size>px/shard-<bucket>-<digest>.u8    classifier_inputs: decoded photos, uint8
    models/inputs/<size>px/index.parquet                 classifier_inputs: id, md5, shard (written last)
    serving/fashion_classifier/<n>/                      serving_model: the SavedModel for TF Serving
                                                         (<n>: an integer, as TF Serving wants)
    serving/fashion_classifier/<n>/assets.extra/labels.json   its classes per head, image size, signature
    serving/models.config                                TF Serving's model_config_list (written last)
    _work/<run id>/<asset>/<partition>/                  a run's work lists (removed at commit)
    _dagster/                                            step outputs between pods (S3 only)

A query's name is also a key segment and a Dagster partition key, so the rule for names lives
here too. Plain module: no Dagster, no I/O.

Why this module is long: it is the store's whole contract, one function per kind of key and
its parser; split by stage, the rule that no other module builds a key would need one owner
per file instead of one.
"""

from __future__ import annotations

import re

# --- names -------------------------------------------------------------------------------------

# A slug: a Dagster partition key and a store folder name, so kept plain.
QUERY_NAME = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,62}[a-z0-9])?")


def check_name(name: str) -> str:
    """``name`` if it can name a query (and so a set's folder); ``ValueError`` saying why not."""
    if not QUERY_NAME.fullmatch(name):
        raise ValueError(
            f"query name {name!r} must be a slug: lower-case letters, digits and '-', 1-64 characters, "
            "not starting or ending with '-'"
        )
    return name


# --- catalog -----------------------------------------------------------------------------------

CATALOG_IMAGES = "catalog/images/"
PRODUCTS_REJECTED_REPORT = "catalog/reports/products_rejected.csv"
IMAGES_REJECTED_REPORT = "catalog/reports/product_images_rejected.csv"


def catalog_image(product_id: int) -> str:
    """A product's catalog image (whatever its format, the key ends in ``.jpg``)."""
    return f"{CATALOG_IMAGES}{product_id}.jpg"


# --- queries and image sets --------------------------------------------------------------------

QUERIES = "queries/"
QUERY_SUFFIX = ".sql"


def query(name: str) -> str:
    return f"{QUERIES}{check_name(name)}{QUERY_SUFFIX}"


def query_name(key: str) -> str | None:
    """The query a ``queries/`` key holds, or None for a file that cannot be one (bad name,
    extension or a subfolder)."""
    filename = key.removeprefix(QUERIES)
    if not key.startswith(QUERIES) or "/" in filename or not filename.endswith(QUERY_SUFFIX):
        return None
    name = filename[: -len(QUERY_SUFFIX)]
    return name if QUERY_NAME.fullmatch(name) else None


def image_set(name: str) -> str:
    """Everything of one query's set: ``image-sets/<name>/``."""
    return f"image-sets/{check_name(name)}/"


def set_images(name: str) -> str:
    return image_set(name) + "images/"


def set_image(name: str, product_id: int) -> str:
    return f"{set_images(name)}{product_id}.jpg"


def set_image_of(key: str) -> tuple[str, int] | None:
    """``(set name, product id)`` of a ``set_image`` key (``image-sets/<name>/images/<id>.jpg``);
    None for any other key."""
    match = re.fullmatch(r"image-sets/([a-z0-9-]+)/images/([0-9]+)\.jpg", key)
    return (match[1], int(match[2])) if match and QUERY_NAME.fullmatch(match[1]) else None


def set_image_version(name: str, product_id: int, md5: str) -> str:
    """Where a photo of ``product_id`` goes when ``set_image`` already holds another photo of it
    that a kept version names: the key carries the content's MD5, so no object is ever
    overwritten while a version names it."""
    if not re.fullmatch(r"[0-9a-f]{32}", md5):
        raise ValueError(f"invalid MD5 {md5!r}")
    return f"{set_images(name)}{product_id}-{md5}.jpg"


def manifest(name: str) -> str:
    """The newest version's manifest, copied: what readers outside the project open."""
    return image_set(name) + "manifest.parquet"


def set_versions(name: str) -> str:
    """Every version of a set: ``image-sets/<name>/versions/``."""
    return image_set(name) + "versions/"


def set_version(name: str, seq: int, digest: str) -> str:
    """One version: ``versions/<seq, 6 digits>-<digest>/``; sorted by name is sorted by age."""
    if isinstance(seq, bool) or not isinstance(seq, int) or seq <= 0:
        raise ValueError(f"invalid set version number {seq!r}")
    if not re.fullmatch(r"[0-9a-f]{12}", digest):
        raise ValueError(f"invalid set version digest {digest!r}")
    return f"{set_versions(name)}{seq:06d}-{digest}/"


def set_version_manifest(name: str, seq: int, digest: str) -> str:
    return set_version(name, seq, digest) + "manifest.parquet"


def set_version_record(name: str, seq: int, digest: str) -> str:
    """When, from which SQL and catalog state: written after the manifest, so it marks a
    complete version."""
    return set_version(name, seq, digest) + "version.json"


def set_version_of(name: str, key: str) -> tuple[int, str] | None:
    """``(seq, digest)`` of a ``set_version_record`` key; None for any other key."""
    match = re.fullmatch(re.escape(set_versions(name)) + r"([0-9]{6})-([0-9a-f]{12})/version\.json", key)
    return (int(match[1]), match[2]) if match else None


# --- augmented sets ----------------------------------------------------------------------------


def augmented_sets(name: str) -> str:
    """Every augmented copy of a set: ``image-sets/<name>/augmented/``."""
    return f"{image_set(name)}augmented/"


def augmented(name: str, digest: str) -> str:
    """One spec's augmented copy of a set: ``image-sets/<name>/augmented/<spec-hash>/``."""
    return f"{augmented_sets(name)}{digest}/"


def augmented_latest(name: str) -> str:
    """Holds the spec hash of the newest augmented set of a query: what ``predictions`` reads."""
    return f"{augmented_sets(name)}LATEST"


def augmented_manifest(name: str, digest: str) -> str:
    return augmented(name, digest) + "manifest.parquet"


def augmented_contact_sheet(name: str, digest: str) -> str:
    return augmented(name, digest) + "contact_sheet.png"


def variant(name: str, digest: str, product_id: int, k: int) -> str:
    return f"{augmented(name, digest)}{product_id}_{k}.jpg"


# --- predictions -------------------------------------------------------------------------------


def predictions(name: str) -> str:
    return image_set(name) + "predictions.parquet"


def set_contact_sheet(name: str) -> str:
    return image_set(name) + "contact_sheet.png"


def prediction_disagreements(name: str) -> str:
    return image_set(name) + "disagreements.png"


# --- the classifier ----------------------------------------------------------------------------

MODELS = "models/fashion_classifier/"
MODEL_LATEST = MODELS + "LATEST"


def model_version(version: str) -> str:
    """One trained or imported model: ``models/fashion_classifier/<version>/``."""
    if not version or "/" in version or version in (".", ".."):
        raise ValueError(f"invalid model version {version!r}")
    return f"{MODELS}{version}/"


def model_keras(version: str) -> str:
    return model_version(version) + "model.keras"


def model_labels(version: str) -> str:
    return model_version(version) + "labels.json"


def model_labels_version(key: str) -> str | None:
    """The model version whose ``model_labels`` ``key`` is; None for any other key."""
    version, _, rest = key.removeprefix(MODELS).partition("/")
    return version if key.startswith(MODELS) and version and rest == "labels.json" else None


def model_saved_model(version: str) -> str:
    """The SavedModel folder (TensorFlow Serving's format), with a trailing '/'."""
    return model_version(version) + "saved_model/"


def model_confusion(version: str) -> str:
    return model_version(version) + "confusion_article_type.png"


def model_precision_coverage(version: str) -> str:
    return model_version(version) + "precision_coverage.png"


MODEL_INPUTS = "models/inputs/"


def model_inputs(image_size: int) -> str:
    """The classifier's input cache at one size: ``models/inputs/<size>px/``."""
    if not isinstance(image_size, int) or not 8 <= image_size <= 1024:
        raise ValueError(f"invalid input size {image_size!r}: expected 8..1024 pixels")
    return f"{MODEL_INPUTS}{image_size}px/"


def model_inputs_index(image_size: int) -> str:
    return model_inputs(image_size) + "index.parquet"


def model_inputs_shard(image_size: int, bucket: int, digest: str) -> str:
    """One shard: the photos of product ids ``[bucket * width, (bucket + 1) * width)``; named by
    its content, so a rewrite never changes a file a reader may hold."""
    if not re.fullmatch(r"[0-9a-f]{8,32}", digest):
        raise ValueError(f"invalid shard digest {digest!r}")
    return f"{model_inputs(image_size)}shard-{bucket:08d}-{digest}.u8"


# --- serving (TensorFlow Serving's layout) ------------------------------------------------------

SERVING = "serving/"
SERVED_MODEL_NAME = "fashion_classifier"  # the model's name in TF Serving's requests and config
SERVING_MODELS = f"{SERVING}{SERVED_MODEL_NAME}/"
SERVING_CONFIG = SERVING + "models.config"


def serving_version(number: int) -> str:
    """One published version: ``serving/fashion_classifier/<n>/`` (a SavedModel's folder; TF
    Serving only loads folders named by a positive integer)."""
    if isinstance(number, bool) or not isinstance(number, int) or number <= 0:
        raise ValueError(f"invalid serving version {number!r}: TF Serving needs a positive integer")
    return f"{SERVING_MODELS}{number}/"


def serving_labels(number: int) -> str:
    """Classes per head, image size and signature of a published version; ``assets.extra/`` is
    the folder TF Serving leaves to its users."""
    return serving_version(number) + "assets.extra/labels.json"


def serving_version_number(key: str) -> int | None:
    """The version a key under ``serving/fashion_classifier/`` belongs to; None for other keys."""
    head, _, rest = key.removeprefix(SERVING_MODELS).partition("/")
    return int(head) if key.startswith(SERVING_MODELS) and rest and head.isdigit() and int(head) > 0 else None


IMAGE_KEY = re.compile(r"(?:catalog/images/|image-sets/[a-z0-9-]+/(?:images/|augmented/[0-9a-f]+/))"
                       r"[0-9]+(?:_[0-9]+|-[0-9a-f]{32})?\.(?:jpg|jpeg|png)")


def is_image_key(key: str) -> bool:
    """Whether ``key`` names a product image (catalog, set or augmented copy): the only keys the
    gateway reads on a caller's behalf."""
    return bool(IMAGE_KEY.fullmatch(key))


# --- scratch space -----------------------------------------------------------------------------

WORK = "_work/"  # a bucket lifecycle rule may expire what failed runs leave here
STEP_OUTPUTS = "_dagster"  # Dagster's S3 IO manager adds its own '/...' below it


def work(run_id: str, asset: str, partition: str) -> str:
    """One run's work lists for one asset and partition."""
    return f"{WORK}{run_id}/{asset}/{partition}/"


def work_run(key: str, asset: str, partition: str) -> str | None:
    """The run whose work lists for ``asset[partition]`` hold ``key``; None for other keys."""
    parts = key.split("/")
    if len(parts) > 4 and f"{parts[0]}/" == WORK and parts[2] == asset and parts[3] == partition:
        return parts[1]
    return None


def work_shard(work_prefix: str, index: int) -> str:
    """A shard's work list (what its step does)."""
    return f"{work_prefix}shard-{index:05d}.parquet"


def work_rows(work_prefix: str, index: int) -> str:
    """What a shard's step produced, for the commit to combine."""
    return f"{work_prefix}rows-{index:05d}.parquet"


def work_stale(work_prefix: str) -> str:
    """Objects the commit removes once the new manifest is in."""
    return work_prefix + "stale.parquet"
