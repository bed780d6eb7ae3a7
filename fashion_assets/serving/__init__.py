"""Online prediction: the classifier published for TensorFlow Serving, and the gateway."""
