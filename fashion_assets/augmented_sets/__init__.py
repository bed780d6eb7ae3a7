"""Stage 3, augmented sets: ``augmented_set[name]``, seeded albumentations copies of an image set
from a declarative spec. ``augment`` (spec -> albumentations, on every core) and ``build``
(plan, shard, commit) are plain modules; ``assets`` wires them into Dagster."""
