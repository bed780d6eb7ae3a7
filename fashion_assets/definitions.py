"""The Dagster code location: ``dagster dev -m fashion_assets.definitions`` loads ``defs``."""

import dagster as dg

from .assets import catalog, image_sets
from .k8s import executor_from_env
from .resources import resources_from_env
from .sensors import image_query_sensor

defs = dg.Definitions(
    assets=dg.load_assets_from_modules([catalog, image_sets]),
    asset_checks=dg.load_asset_checks_from_modules([image_sets]),
    sensors=[image_query_sensor],
    resources=resources_from_env(),
    executor=executor_from_env(),
)
