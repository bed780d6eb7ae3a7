"""Stage 2, image sets: ``queries/<name>.sql`` -> ``image_set[name]``, the selected catalog images
copied in the store with a manifest. ``registry``, ``sandbox`` and ``export`` are plain modules;
``assets`` and ``sensors`` wire them into Dagster."""
