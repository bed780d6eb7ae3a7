"""The tree shows the pipeline, and keeps its rules: one package per stage, plain domain modules
beside one thin Dagster wiring module, every store key built in ``layout.py``, no module grown
past ~300 lines without saying why."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from fashion_assets import layout

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "fashion_assets"
STAGES = ("catalog", "image_sets", "augmented_sets", "classifier", "predictions", "serving", "labelling")
# The only modules that may import Dagster: the wiring. Everything else is plain Python that the
# tests (and a notebook, or another service) can call without a Dagster instance.
WIRING = {"definitions.py", "resources.py", "resources_s3.py", "cli.py", "core/placement.py",
          *(f"{stage}/assets.py" for stage in STAGES), "image_sets/sensors.py",
           "serving/cli.py", "labelling/cli.py", "image_sets/cli.py"}
# Top-level folders of the store (``layout.py``'s docstring lists them).
STORE_ROOTS = ("catalog/", "image-sets/", "models/", "queries/", "serving/", "_work/", "_dagster")
LONG_MODULE_LINES = 300
LONG_MODULE_REASON = "Why this module is long:"


def modules(root: Path = PACKAGE) -> dict[str, ast.Module]:
    return {path.relative_to(root).as_posix(): ast.parse(path.read_text(), str(path))
            for path in sorted(root.rglob("*.py"))}


def imported_modules(tree: ast.Module) -> set[str]:
    """Absolute top-level names this module imports (at any depth: inside functions too)."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def docstring_nodes(tree: ast.Module) -> set[int]:
    """ids of the string constants that are docstrings (prose, not code)."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                found.add(id(body[0].value))
    return found


def test_the_tree_reads_as_the_pipeline():
    packages = sorted(p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file())
    assert packages == sorted(["core", *STAGES])
    for stage in STAGES:
        assert (PACKAGE / stage / "assets.py").is_file(), stage
    definitions = (PACKAGE / "definitions.py").read_text()
    assert "catalog -> image_sets -> augmented_sets -> classifier -> predictions" in definitions


def test_only_the_wiring_modules_import_dagster():
    found = {}
    for name, tree in modules().items():
        dagster_imports = {m for m in imported_modules(tree) if m == "dagster" or m.startswith("dagster_")}
        if dagster_imports:
            found[name] = dagster_imports
    assert set(found) <= WIRING, f"plain modules importing Dagster: {sorted(set(found) - WIRING)}"
    # Each stage's wiring really is where its Dagster lives.
    assert {f"{stage}/assets.py" for stage in STAGES} <= set(found)


def test_the_plain_modules_load_without_dagster():
    """Not only no direct import: nothing they import pulls Dagster in either. A subprocess with
    Dagster made unimportable imports every plain module."""
    plain = sorted(
        "fashion_assets." + name.removesuffix(".py").removesuffix("/__init__").replace("/", ".")
        for name in modules() if name not in WIRING and name != "__init__.py"
    )
    assert len(plain) >= 30
    script = (
        "import importlib, importlib.abc, sys\n"
        "class NoDagster(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'dagster' or name.startswith(('dagster.', 'dagster_')):\n"
        "            raise ImportError(f'{name} imported by a plain module')\n"
        "sys.meta_path.insert(0, NoDagster())\n"
        "for name in sys.argv[1:]:\n"
        "    importlib.import_module(name)\n"
        "print(len(sys.argv) - 1, 'modules')\n"
    )
    result = subprocess.run([sys.executable, "-c", script, *plain], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == f"{len(plain)} modules"


def test_store_keys_are_built_only_in_layout():
    """No string in the code (docstrings aside) names a folder of the store; only ``layout.py``
    does. Text with a ``<placeholder>`` is prose for people (help texts), not a key."""
    offenders = []
    for name, tree in modules().items():
        if name == "layout.py":
            continue
        prose = docstring_nodes(tree)
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in prose:
                if any(root in node.value for root in STORE_ROOTS) and "<" not in node.value:
                    offenders.append(f"{name}:{node.lineno}: {node.value!r}")
    assert offenders == []


def test_the_layout_is_the_stored_one():
    """Byte-compatible with what earlier versions stored: these keys are read by people and tools."""
    assert layout.catalog_image(15970) == "catalog/images/15970.jpg"
    assert layout.PRODUCTS_REJECTED_REPORT == "catalog/reports/products_rejected.csv"
    assert layout.IMAGES_REJECTED_REPORT == "catalog/reports/product_images_rejected.csv"
    assert layout.query("red-shoes") == "queries/red-shoes.sql"
    assert layout.image_set("red-shoes") == "image-sets/red-shoes/"
    assert layout.set_image("red-shoes", 15970) == "image-sets/red-shoes/images/15970.jpg"
    assert layout.manifest("red-shoes") == "image-sets/red-shoes/manifest.parquet"
    assert layout.augmented("red-shoes", "3ef0fa4d3d86") == "image-sets/red-shoes/augmented/3ef0fa4d3d86/"
    assert layout.variant("red-shoes", "3ef0fa4d3d86", 15970, 1) == \
        "image-sets/red-shoes/augmented/3ef0fa4d3d86/15970_1.jpg"
    assert layout.augmented_manifest("red-shoes", "abc") == "image-sets/red-shoes/augmented/abc/manifest.parquet"
    assert layout.augmented_contact_sheet("red-shoes", "abc") == "image-sets/red-shoes/augmented/abc/contact_sheet.png"
    assert layout.augmented_latest("red-shoes") == "image-sets/red-shoes/augmented/LATEST"
    assert layout.predictions("red-shoes") == "image-sets/red-shoes/predictions.parquet"
    assert layout.set_contact_sheet("red-shoes") == "image-sets/red-shoes/contact_sheet.png"
    assert layout.prediction_disagreements("red-shoes") == "image-sets/red-shoes/disagreements.png"
    assert layout.MODEL_LATEST == "models/fashion_classifier/LATEST"
    assert layout.model_keras("v1") == "models/fashion_classifier/v1/model.keras"
    assert layout.model_labels("v1") == "models/fashion_classifier/v1/labels.json"
    assert layout.model_saved_model("v1") == "models/fashion_classifier/v1/saved_model/"
    assert layout.model_confusion("v1") == "models/fashion_classifier/v1/confusion_article_type.png"
    assert layout.work("run-1", "image_set", "red-shoes") == "_work/run-1/image_set/red-shoes/"
    assert layout.work_shard("_work/r/a/p/", 3) == "_work/r/a/p/shard-00003.parquet"
    assert layout.work_rows("_work/r/a/p/", 3) == "_work/r/a/p/rows-00003.parquet"
    assert layout.work_stale("_work/r/a/p/") == "_work/r/a/p/stale.parquet"


def test_layout_refuses_names_that_would_escape_their_folder():
    assert layout.set_image_of("image-sets/red-shoes/images/15970.jpg") == ("red-shoes", 15970)
    assert layout.set_image_of("image-sets/red-shoes/images/.15970.jpg.tmp") is None
    assert layout.set_image_of("image-sets/red-shoes/images/15970-" + "a" * 32 + ".jpg") is None
    assert layout.set_image_version("red-shoes", 15970, "a" * 32) == f"image-sets/red-shoes/images/15970-{'a' * 32}.jpg"
    assert layout.set_version_record("red-shoes", 3, "0123456789ab") == \
        "image-sets/red-shoes/versions/000003-0123456789ab/version.json"
    assert layout.set_version_of("red-shoes", "image-sets/red-shoes/versions/000003-0123456789ab/version.json") == \
        (3, "0123456789ab")
    assert layout.query_name("queries/red-shoes.sql") == "red-shoes"
    assert [layout.query_name(k) for k in ("queries/Red.sql", "queries/a/b.sql", "queries/x.txt")] == [None] * 3
    for bad in ("../x", "a/b", "", "-x", "X"):
        with pytest.raises(ValueError, match="must be a slug"):
            layout.image_set(bad)
    for bad in ("", "..", "a/b"):
        with pytest.raises(ValueError, match="invalid model version"):
            layout.model_version(bad)


def test_no_module_is_long_without_a_reason():
    """Past ~300 lines a module says at its top why it is one module."""
    long_without_reason = []
    for root in (PACKAGE, ROOT / "fashion_assets_tests", ROOT / "bench"):
        for name, tree in modules(root).items():
            lines = len((root / name).read_text().splitlines())
            reason = LONG_MODULE_REASON in (ast.get_docstring(tree) or "")
            if lines > LONG_MODULE_LINES and not reason:
                long_without_reason.append(f"{root.name}/{name}: {lines} lines")
    assert long_without_reason == []
