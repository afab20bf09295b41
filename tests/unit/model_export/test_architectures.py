"""Builders: output shapes, fixed layer names, encoder weights."""

from __future__ import annotations

import numpy as np
import pytest

pytestmark = pytest.mark.train
pytest.importorskip("tensorflow")

from model_export import architectures as arch  # noqa: E402


def test_mobilenetv2_resunet_shapes_and_names() -> None:
    model = arch.build_mobilenetv2_resunet((64, 64, 3), encoder_weights=None)
    assert model.input_shape == (None, 64, 64, 3)
    assert model.output_shape == (None, 64, 64, 1)
    assert model.layers[0].name == arch.INPUT_NAME
    assert model.layers[-1].name == arch.OUTPUT_NAME
    # skips at 1/2, 1/4, 1/8, 1/16 of the input, bridge at 1/32 with 320 channels
    sizes = [model.get_layer(n).output.shape[1] for n in arch.MOBILENETV2_SKIPS]
    assert sizes == [32, 16, 8, 4]
    assert model.get_layer(arch.MOBILENETV2_BRIDGE).output.shape[1:] == (2, 2, 320)
    for stage in range(1, 5):
        for suffix in ("upsample", "concat", "res_add", "res_shortcut_conv"):
            model.get_layer(f"decoder_stage{stage}_{suffix}")
    model.get_layer("final_upsample")


def test_mobilenetv2_resunet_at_256_has_the_reference_geometry() -> None:
    model = arch.build_mobilenetv2_resunet(encoder_weights=None)
    assert model.get_layer(arch.MOBILENETV2_BRIDGE).output.shape[1:] == (8, 8, 320)
    assert [model.get_layer(n).output.shape[1] for n in arch.MOBILENETV2_SKIPS] == [128, 64, 32, 16]
    assert model.output_shape == (None, 256, 256, 1)


def test_local_imagenet_weights_load_into_the_encoder() -> None:
    import h5py

    model = arch.build_mobilenetv2_resunet((64, 64, 3), encoder_weights="imagenet-local")
    with h5py.File(arch.LOCAL_WEIGHTS) as stored:
        expected = stored["layers/conv2d/vars/0"][()]  # MobileNetV2's first conv ("Conv1")
    np.testing.assert_array_equal(model.get_layer("Conv1").get_weights()[0], expected)


def test_unknown_weights_file_is_refused(tmp_path) -> None:
    with pytest.raises(arch.ArchitectureError, match="not found"):
        arch.resolve_encoder_weights(tmp_path / "missing.h5")


@pytest.mark.parametrize("name", ["unet", "resunet", "attention-unet", "mobilenetv2-unet"])
def test_baselines_build_with_fixed_io_names(name: str) -> None:
    model = arch.build_model(name, (64, 64, 3), encoder_weights=None)
    assert model.output_shape == (None, 64, 64, 1)
    assert model.layers[0].name == "image"
    assert model.layers[-1].name == "mask"
    out = np.asarray(model(np.zeros((1, 64, 64, 3), np.float32)))
    assert ((out >= 0) & (out <= 1)).all()


def test_attention_unet_has_gates() -> None:
    model = arch.build_attention_unet((32, 32, 3), base_filters=4, depth=2)
    assert model.get_layer("decoder_stage1_attention_psi").output.shape[-1] == 1


def test_bad_input_size_is_refused() -> None:
    with pytest.raises(arch.ArchitectureError, match="multiple of 32"):
        arch.build_mobilenetv2_resunet((100, 100, 3), encoder_weights=None)


def test_encoder_layers_stop_before_the_decoder() -> None:
    model = arch.build_mobilenetv2_resunet((64, 64, 3), encoder_weights=None)
    names = arch.encoder_layer_names(model)
    assert names[0] == "Conv1"
    assert arch.MOBILENETV2_BRIDGE in names
    assert not any(n.startswith("decoder_") for n in names)
