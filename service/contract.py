"""The model contract: what an ONNX model promises and the service relies on.

The export (``model_export.export``) writes it as JSON into the ONNX file's
metadata under :data:`CONTRACT_KEY`; the service reads and checks it at
start-up (:func:`service.inference.load_segmenter`) and refuses a model whose
contract it cannot satisfy.
"""

from __future__ import annotations

import json
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

CONTRACT_KEY = "mammoseg.contract"
SCHEMA_VERSION = 1


class ContractError(ValueError):
    """The model's contract is missing, malformed or not satisfiable."""


class ValidationMetrics(BaseModel):
    model_config = ConfigDict(frozen=True, extra="allow")

    dice: float | None = None
    iou: float | None = None
    split: str = Field(default="", description="Which split the metrics were measured on")


class ModelContract(BaseModel):
    """Everything serving needs to feed the model and read its answer."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    schema_version: Literal[1] = 1
    model_name: str = Field(min_length=1, max_length=64)
    model_version: str = Field(min_length=1, max_length=16)
    input_name: str = Field(min_length=1)
    input_layout: Literal["NHWC", "NCHW"] = "NHWC"
    input_height: int = Field(ge=16, le=4096)
    input_width: int = Field(ge=16, le=4096)
    input_channels: Literal[1, 3] = 3
    normalisation: Literal["unit"] = Field(
        default="unit",
        description="'unit': display-ready grayscale scaled to [0, 1], replicated to all channels",
    )
    crop_to_breast: bool = Field(
        default=False,
        description="Crop to the breast's bounding box before resizing (train and serve agree)",
    )
    pad_to_square: bool = Field(
        default=False,
        description="Zero-pad the (cropped) image to a centred square before resizing, as the "
        "real training data was made (train and serve agree)",
    )
    output_name: str = Field(min_length=1)
    output_kind: Literal["sigmoid_probability"] = "sigmoid_probability"
    threshold: float = Field(default=0.5, gt=0.0, lt=1.0)
    training_data: str = ""
    validation_metrics: ValidationMetrics = ValidationMetrics()
    framework: str = ""

    def to_json(self) -> str:
        return self.model_dump_json()

    @classmethod
    def from_json(cls, text: str) -> ModelContract:
        try:
            return cls.model_validate(json.loads(text))
        except (json.JSONDecodeError, ValidationError) as exc:
            raise ContractError(f"model contract is not valid: {exc}") from exc
