"""Stage 1, the catalog: ``styles.csv`` -> table ``products``; ``images/`` -> the store and table
``product_images``. ``styles_csv``, ``images`` and ``tables`` are plain modules; ``assets`` wires
them into Dagster."""
