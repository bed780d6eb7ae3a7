"""fashion-assets: a product catalog turned into SQL-selected image sets, augmented sets, a
Keras classifier and prediction tables, as Dagster assets."""

__version__ = "0.1.0"
