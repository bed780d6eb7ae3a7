"""Stage 5, predictions: ``predictions[name]``, the classifier over an image set (or its newest
augmented set), as rows of table ``predictions`` and as Parquet. ``inference``, ``table`` and
``build`` (plan, shard, commit) are plain modules; ``assets`` wires them into Dagster."""
