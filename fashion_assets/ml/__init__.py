"""The classifier: labels, model, training, inference. Plain modules: TensorFlow/Keras, no Dagster.

TensorFlow is imported inside functions, so importing the package (and loading the Dagster
code location) stays fast; only the steps that train or predict pay for it.
"""
