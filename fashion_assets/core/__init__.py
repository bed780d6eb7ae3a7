"""What every stage shares: object stores, the catalog database engine, shards and work lists,
Parquet I/O, thread pools, progress and reporting (plain modules), and the placement of steps
(``placement``, the one module here that imports Dagster)."""
