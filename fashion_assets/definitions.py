"""The Dagster code location: ``dagster dev -m fashion_assets.definitions`` loads ``defs``."""

import dagster as dg

from .assets import catalog
from .resources import resources_from_env

defs = dg.Definitions(
    assets=dg.load_assets_from_modules([catalog]),
    resources=resources_from_env(),
)
