"""Stage 4, the classifier: ``fashion_classifier``, one network with three heads, trained from
scratch on the catalog or imported. Plain modules (TensorFlow/Keras, no Dagster): ``labels``,
``network``, ``images`` (decoding, shared with inference), ``train``, ``evaluate``,
``artifacts`` (the model's place in the store) and ``build`` (train or import, evaluate, save);
``assets`` wires them into Dagster.

TensorFlow is imported inside functions, so importing the package (and loading the Dagster
code location) stays fast; only the steps that train or predict pay for it.
"""
