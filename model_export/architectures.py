"""Keras builders for the segmentation networks: the shipped hybrid model and its baselines.

One public builder per architecture, each with fixed layer names so that
weights load by name and ONNX node names stay stable across exports
(segmentation_models' convention). Every model takes a ``[0, 1]`` NHWC image
named ``image`` and answers a sigmoid probability map named ``mask``.

Keras is imported inside the builders: importing this module costs nothing.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import keras

INPUT_NAME = "image"
OUTPUT_NAME = "mask"

#: MobileNetV2 layers whose outputs feed the decoder, from fine to coarse
#: (128, 64, 32 and 16 px at a 256 px input), and the 8x8x320 bridge.
MOBILENETV2_SKIPS = (
    "block_1_expand_relu",
    "block_3_expand_relu",
    "block_6_expand_relu",
    "block_13_expand_relu",
)
MOBILENETV2_BRIDGE = "block_16_project"

#: The ImageNet weights committed with the project (see weights/PROVENANCE.md).
LOCAL_WEIGHTS = Path(__file__).resolve().parent / "weights" / "mobilenet_v2_1.0_no_top.weights.h5"
LOCAL_WEIGHTS_SHA256 = "6714965a05ee6d8568343664bb9cda7456c6eb1fa190a6f5eb39bf087068b100"
ENCODER_WEIGHTS_DEFAULT = "imagenet-local"

DECODER_FILTERS = (256, 128, 64, 32)


class ArchitectureError(ValueError):
    """A builder was asked for something it cannot build (bad weights, bad input size)."""


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def resolve_encoder_weights(encoder_weights: str | Path | None) -> str | Path | None:
    """Normalise the encoder-weights choice to None, ``"imagenet"`` or an existing file.

    ``"imagenet-local"`` is the committed copy of the Keras ImageNet weights,
    checked by hash; ``"imagenet"`` lets Keras download them (needs internet).
    """
    if encoder_weights is None or str(encoder_weights).lower() in {"none", ""}:
        return None
    if str(encoder_weights) == "imagenet":
        return "imagenet"
    if str(encoder_weights) == ENCODER_WEIGHTS_DEFAULT:
        if not LOCAL_WEIGHTS.is_file():
            raise ArchitectureError(f"the committed encoder weights are missing: {LOCAL_WEIGHTS}")
        if _sha256(LOCAL_WEIGHTS) != LOCAL_WEIGHTS_SHA256:
            raise ArchitectureError(f"{LOCAL_WEIGHTS} does not have the expected sha256")
        return LOCAL_WEIGHTS
    path = Path(encoder_weights)
    if not path.is_file():
        raise ArchitectureError(f"encoder weights file not found: {path}")
    return path


def _check_input_shape(input_shape: tuple[int, int, int], multiple: int) -> None:
    height, width, channels = input_shape
    if height % multiple or width % multiple:
        raise ArchitectureError(
            f"input {height}x{width} must be a multiple of {multiple} px for this network"
        )
    if channels not in (1, 3):
        raise ArchitectureError(f"input must have 1 or 3 channels, got {channels}")


def _conv_bn_relu(x: Any, filters: int, name: str, kernel_size: int = 3) -> Any:
    from keras import layers

    x = layers.Conv2D(filters, kernel_size, padding="same", use_bias=False, name=f"{name}_conv")(x)
    x = layers.BatchNormalization(name=f"{name}_bn")(x)
    return layers.Activation("relu", name=f"{name}_relu")(x)


def _conv_block(x: Any, filters: int, name: str) -> Any:
    """Two 3x3 conv + BN + ReLU (the plain U-Net block)."""
    x = _conv_bn_relu(x, filters, f"{name}_a")
    return _conv_bn_relu(x, filters, f"{name}_b")


def _residual_block(x: Any, filters: int, name: str) -> Any:
    """Two 3x3 conv+BN+ReLU with a 1x1 conv shortcut, added before the last ReLU."""
    from keras import layers

    shortcut = layers.Conv2D(
        filters, 1, padding="same", use_bias=False, name=f"{name}_shortcut_conv"
    )(x)
    shortcut = layers.BatchNormalization(name=f"{name}_shortcut_bn")(shortcut)
    y = _conv_bn_relu(x, filters, f"{name}_a")
    y = layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"{name}_b_conv")(y)
    y = layers.BatchNormalization(name=f"{name}_b_bn")(y)
    y = layers.Add(name=f"{name}_add")([shortcut, y])
    return layers.Activation("relu", name=f"{name}_out")(y)


def _attention_gate(skip: Any, gating: Any, filters: int, name: str) -> Any:
    """Additive attention gate (Oktay et al. 2018): weights the skip by a learned map."""
    from keras import layers

    theta = layers.Conv2D(filters, 1, name=f"{name}_theta")(skip)
    phi = layers.Conv2D(filters, 1, name=f"{name}_phi")(gating)
    added = layers.Add(name=f"{name}_add")([theta, phi])
    act = layers.Activation("relu", name=f"{name}_relu")(added)
    psi = layers.Conv2D(1, 1, activation="sigmoid", name=f"{name}_psi")(act)
    return layers.Multiply(name=f"{name}_multiply")([skip, psi])


def _head(x: Any, name: str = OUTPUT_NAME) -> Any:
    from keras import layers

    return layers.Conv2D(1, 1, activation="sigmoid", dtype="float32", name=name)(x)


def _mobilenetv2_encoder(
    inputs: Any, encoder_weights: str | Path | None
) -> tuple[keras.Model, list[Any], Any]:
    """MobileNetV2 (alpha 1.0, no top) on ``inputs`` scaled to [-1, 1] inside the model."""
    import keras
    from keras import layers

    resolved = resolve_encoder_weights(encoder_weights)
    x = inputs
    if inputs.shape[-1] == 1:
        x = layers.Concatenate(name="gray_to_rgb")([x, x, x])
    # MobileNetV2 was trained on [-1, 1]; the model keeps the contract's [0, 1] input.
    x = layers.Rescaling(2.0, offset=-1.0, name="encoder_preprocess")(x)
    encoder = keras.applications.MobileNetV2(
        input_tensor=x,
        include_top=False,
        alpha=1.0,
        weights="imagenet" if resolved == "imagenet" else None,
    )
    if isinstance(resolved, Path):
        encoder.load_weights(str(resolved))
    skips = [encoder.get_layer(name).output for name in MOBILENETV2_SKIPS]
    bridge = encoder.get_layer(MOBILENETV2_BRIDGE).output
    return encoder, skips, bridge


def encoder_layer_names(model: keras.Model) -> list[str]:
    """Names of the MobileNetV2 encoder layers of a model built here (for freezing)."""
    names = []
    for layer in model.layers:
        if layer.name in {INPUT_NAME, "gray_to_rgb", "encoder_preprocess"}:
            continue
        if layer.name.startswith(("decoder_", "final_", OUTPUT_NAME)):
            break
        names.append(layer.name)
    return names


def build_mobilenetv2_resunet(
    input_shape: tuple[int, int, int] = (256, 256, 3),
    encoder_weights: str | Path | None = ENCODER_WEIGHTS_DEFAULT,
    decoder_filters: tuple[int, int, int, int] = DECODER_FILTERS,
) -> keras.Model:
    """The hybrid network: MobileNetV2 encoder, residual U-Net decoder (the shipped model).

    Bridge ``block_16_project`` (8x8x320 at 256 px), skips from
    :data:`MOBILENETV2_SKIPS`; each decoder stage ``decoder_stage{1..4}``
    upsamples, concatenates the skip and runs a residual block; then
    ``final_upsample`` to the input size and the 1x1 sigmoid ``mask``.
    """
    import keras
    from keras import layers

    _check_input_shape(input_shape, 32)
    inputs = keras.Input(shape=input_shape, name=INPUT_NAME)
    _, skips, x = _mobilenetv2_encoder(inputs, encoder_weights)
    for stage, (skip, filters) in enumerate(zip(reversed(skips), decoder_filters, strict=True), 1):
        name = f"decoder_stage{stage}"
        x = layers.UpSampling2D(2, interpolation="bilinear", name=f"{name}_upsample")(x)
        x = layers.Concatenate(name=f"{name}_concat")([x, skip])
        x = _residual_block(x, filters, f"{name}_res")
    x = layers.UpSampling2D(2, interpolation="bilinear", name="final_upsample")(x)
    return keras.Model(inputs, _head(x), name="mobilenetv2_resunet")


def build_mobilenetv2_unet(
    input_shape: tuple[int, int, int] = (256, 256, 3),
    encoder_weights: str | Path | None = ENCODER_WEIGHTS_DEFAULT,
    decoder_filters: tuple[int, int, int, int] = DECODER_FILTERS,
) -> keras.Model:
    """Baseline: the same MobileNetV2 encoder with a plain U-Net decoder (two conv blocks)."""
    import keras
    from keras import layers

    _check_input_shape(input_shape, 32)
    inputs = keras.Input(shape=input_shape, name=INPUT_NAME)
    _, skips, x = _mobilenetv2_encoder(inputs, encoder_weights)
    for stage, (skip, filters) in enumerate(zip(reversed(skips), decoder_filters, strict=True), 1):
        name = f"decoder_stage{stage}"
        x = layers.UpSampling2D(2, interpolation="bilinear", name=f"{name}_upsample")(x)
        x = layers.Concatenate(name=f"{name}_concat")([x, skip])
        x = _conv_block(x, filters, f"{name}_conv")
    x = layers.UpSampling2D(2, interpolation="bilinear", name="final_upsample")(x)
    return keras.Model(inputs, _head(x), name="mobilenetv2_unet")


def _from_scratch(
    input_shape: tuple[int, int, int],
    base_filters: int,
    depth: int,
    *,
    residual: bool,
    attention: bool,
    model_name: str,
) -> keras.Model:
    import keras
    from keras import layers

    _check_input_shape(input_shape, 2**depth)
    inputs = keras.Input(shape=input_shape, name=INPUT_NAME)
    block = _residual_block if residual else _conv_block
    x = inputs
    skips = []
    for level in range(depth):
        x = block(x, base_filters * 2**level, f"encoder_level{level + 1}")
        skips.append(x)
        x = layers.MaxPooling2D(2, name=f"encoder_level{level + 1}_pool")(x)
    x = block(x, base_filters * 2**depth, "bridge")
    for stage, level in enumerate(reversed(range(depth)), 1):
        filters = base_filters * 2**level
        name = f"decoder_stage{stage}"
        x = layers.Conv2DTranspose(filters, 2, strides=2, padding="same", name=f"{name}_upsample")(
            x
        )
        skip = skips[level]
        if attention:
            skip = _attention_gate(skip, x, max(filters // 2, 1), f"{name}_attention")
        x = layers.Concatenate(name=f"{name}_concat")([x, skip])
        x = block(x, filters, f"{name}_{'res' if residual else 'conv'}")
    return keras.Model(inputs, _head(x), name=model_name)


def build_unet(
    input_shape: tuple[int, int, int] = (256, 256, 3),
    base_filters: int = 32,
    depth: int = 4,
) -> keras.Model:
    """Baseline: Ronneberger's U-Net (conv blocks, max pooling, transposed-conv upsampling)."""
    return _from_scratch(
        input_shape, base_filters, depth, residual=False, attention=False, model_name="unet"
    )


def build_resunet(
    input_shape: tuple[int, int, int] = (256, 256, 3),
    base_filters: int = 32,
    depth: int = 4,
) -> keras.Model:
    """Baseline: U-Net with residual blocks (1x1 shortcut) in encoder and decoder."""
    return _from_scratch(
        input_shape, base_filters, depth, residual=True, attention=False, model_name="resunet"
    )


def build_attention_unet(
    input_shape: tuple[int, int, int] = (256, 256, 3),
    base_filters: int = 32,
    depth: int = 4,
) -> keras.Model:
    """Baseline: U-Net whose skips pass through additive attention gates."""
    return _from_scratch(
        input_shape,
        base_filters,
        depth,
        residual=False,
        attention=True,
        model_name="attention_unet",
    )


#: CLI names of the builders.
ARCHITECTURES = {
    "mobilenetv2-resunet": build_mobilenetv2_resunet,
    "mobilenetv2-unet": build_mobilenetv2_unet,
    "unet": build_unet,
    "resunet": build_resunet,
    "attention-unet": build_attention_unet,
}
#: Those with a pretrained encoder (two-phase training applies to them).
PRETRAINED_ENCODER = {"mobilenetv2-resunet", "mobilenetv2-unet"}


def build_model(
    architecture: str,
    input_shape: tuple[int, int, int] = (256, 256, 3),
    encoder_weights: str | Path | None = ENCODER_WEIGHTS_DEFAULT,
) -> keras.Model:
    """Build an architecture by its CLI name."""
    try:
        builder = ARCHITECTURES[architecture]
    except KeyError:
        raise ArchitectureError(
            f"unknown architecture {architecture!r}; choose from {', '.join(ARCHITECTURES)}"
        ) from None
    build: Any = builder
    if architecture in PRETRAINED_ENCODER:
        return build(input_shape, encoder_weights=encoder_weights)
    return build(input_shape)
