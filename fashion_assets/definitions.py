"""The Dagster code location: ``dagster dev -m fashion_assets.definitions`` (or ``dg dev``)
loads ``defs``.

The pipeline in the order it runs, one package per stage::

    catalog -> image_sets -> augmented_sets -> classifier -> predictions
                                              classifier -> serving      (online: TF Serving + gateway)
               image_sets -> labelling -> classifier                     (human labels back into training)
"""

import dagster as dg

from .augmented_sets import assets as augmented_sets
from .catalog import assets as catalog
from .classifier import assets as classifier
from .core.placement import executor_from_env
from .core.startup import freeze_what_is_loaded
from .image_sets import assets as image_sets
from .image_sets.sensors import image_query_sensor
from .labelling import assets as labelling
from .predictions import assets as predictions
from .resources import resources_from_env
from .serving import assets as serving

STAGES = [catalog, image_sets, augmented_sets, classifier, predictions, serving, labelling]

# Declarative automation: augmented_set and predictions are `AutomationCondition.eager()` (once
# their inputs' blocking checks pass), so once image_query_sensor's run lands, the daemon requests
# the augmented set, then the predictions, for that partition (and new predictions for every set
# when the model changes); image_set follows the catalog (re-materialised when products or
# product_images change); classifier_inputs decodes the new or changed photos for the next training;
# serving_model publishes each new model for TF Serving and the gateway.
# Running by default, like the query sensor, so dropping a .sql file
# into the store is all a user does.
fashion_automation = dg.AutomationConditionSensorDefinition(
    "fashion_automation",
    target=dg.AssetSelection.assets(image_sets.image_set, augmented_sets.augmented_set, predictions.predictions,
                                   serving.serving_model, classifier.classifier_inputs),
    default_status=dg.DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=30,
)

defs = dg.Definitions(
    assets=dg.load_assets_from_modules(STAGES),
    asset_checks=dg.load_asset_checks_from_modules(STAGES),
    sensors=[image_query_sensor, fashion_automation],
    resources=resources_from_env(),
    executor=executor_from_env(),
)

# Dagster's objects, ours and the definitions live as long as the process: later collections and the
# shutdown skip them (core/startup.py: a no-op one-partition CLI run 2.25-2.45 -> 1.8-1.9 s).
freeze_what_is_loaded()
