"""The network: a small residual CNN with three softmax heads, trained from scratch.

Input: raw RGB ``uint8`` images ``[N, H, W, 3]`` at ``image_size`` (the model rescales them
itself, so every consumer feeds the same thing). Outputs, named by head: ``master_category``,
``sub_category``, ``article_type`` (probabilities, classes in ``labels.json`` order).

Why this shape: product photos are centred objects on white, so a narrow residual network with
batch norm and global pooling learns them well from ~7k images on a CPU; the heads share the
trunk, and the finer heads also see the coarser heads' logits, so an article type agrees with its
category. Only standard Keras layers: the ``.keras`` file loads anywhere Keras 3 does.
"""

from __future__ import annotations

from collections.abc import Mapping

from ..core import tf_runtime
from .labels import HEADS


def _keras():
    keras = tf_runtime.keras()

    return keras


# Moving averages that keep up with the weights: with ~100 steps an epoch, Keras' default 0.99
# lags behind and makes the validation accuracy jump about from epoch to epoch.
BN_MOMENTUM = 0.9


def _bn(name: str, **kwargs):
    return _keras().layers.BatchNormalization(momentum=BN_MOMENTUM, name=name, **kwargs)


def _block(x, filters: int, stride: int, name: str):
    layers = _keras().layers
    shortcut = x
    y = layers.Conv2D(filters, 3, strides=stride, padding="same", use_bias=False, name=f"{name}_conv1")(x)
    y = _bn(f"{name}_bn1")(y)
    y = layers.Activation("relu", name=f"{name}_relu1")(y)
    y = layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"{name}_conv2")(y)
    y = _bn(f"{name}_bn2", gamma_initializer="zeros")(y)  # each block starts as the identity
    if stride != 1 or shortcut.shape[-1] != filters:
        shortcut = layers.Conv2D(filters, 1, strides=stride, use_bias=False, name=f"{name}_proj")(shortcut)
        shortcut = _bn(f"{name}_proj_bn")(shortcut)
    return layers.Activation("relu", name=f"{name}_out")(layers.Add(name=f"{name}_add")([shortcut, y]))


def build_classifier(
    num_classes: Mapping[str, int],
    image_size: int = 96,
    widths: tuple[int, ...] = (24, 48, 96, 192),
    blocks: tuple[int, ...] = (1, 1, 2, 1),
    dropout: float = 0.3,
):
    """The training model: uint8 images in, a softmax per head out."""
    keras = _keras()
    layers = keras.layers
    inputs = keras.Input((image_size, image_size, 3), dtype="uint8", name="image")
    x = layers.Rescaling(1 / 127.5, offset=-1.0, name="rescale")(inputs)
    x = layers.Conv2D(widths[0], 3, strides=2, padding="same", use_bias=False, name="stem_conv")(x)
    x = _bn("stem_bn")(x)
    x = layers.Activation("relu", name="stem_relu")(x)
    for stage, (width, count) in enumerate(zip(widths, blocks, strict=True)):
        for i in range(count):
            stride = 2 if i == 0 and stage > 0 else 1
            x = _block(x, width, stride, f"s{stage}b{i}")
    x = layers.GlobalAveragePooling2D(name="pool")(x)
    features = layers.Dropout(dropout, name="dropout")(x)

    outputs, context = {}, features
    for head in HEADS:  # coarse to fine: each head also sees the coarser heads' logits
        logits = layers.Dense(num_classes[head], name=f"{head}_logits")(context)
        outputs[head] = layers.Activation("softmax", dtype="float32", name=head)(logits)
        context = layers.Concatenate(name=f"{head}_context")([features, logits])
    return keras.Model(inputs, outputs, name="fashion_classifier")

