"""The Dagster code location: ``dagster dev -m fashion_assets.definitions`` loads ``defs``."""

import dagster as dg

from .assets import augmented, catalog, image_sets, model, predictions
from .k8s import executor_from_env
from .resources import resources_from_env
from .sensors import fashion_automation, image_query_sensor

ASSET_MODULES = [catalog, image_sets, augmented, model, predictions]

defs = dg.Definitions(
    assets=dg.load_assets_from_modules(ASSET_MODULES),
    asset_checks=dg.load_asset_checks_from_modules(ASSET_MODULES),
    sensors=[image_query_sensor, fashion_automation],
    resources=resources_from_env(),
    executor=executor_from_env(),
)
