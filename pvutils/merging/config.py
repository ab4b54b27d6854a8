"""The mergekit YAML, as a declarative schema (pydantic): one-line errors naming the field.

    merge_method: ties
    base_model: path/to/base
    models:
      - model: path/to/finetuned        # or  vector: path/to/vector.safetensors
        parameters: {weight: 0.8, density: 0.2}
    parameters: {normalize: true, lambda: 1.0, trim_scope: per_tensor}
    dtype: bfloat16

Beyond mergekit: `vector:` entries (a personality vector file instead of a model),
`trim_scope: global` (the authors' whole-model TIES threshold), `trim_density` (a TIES
trim after the DARE drop), `max_shard_size` (bytes or "5GB").
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    ValidationError,
    field_validator,
    model_validator,
)

from ..vectors import MergeError, check_weights
from ..writer import parse_size
from .options import Fraction, MethodName, Number, one_line


def _yaml_number(value: Any) -> Any:
    """YAML 1.1 reads `1e30` (no decimal point) as a string: a numeric string is a number."""
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


YamlNumber = Annotated[Number, BeforeValidator(_yaml_number)]
Gamma = Annotated[Number, Field(ge=0, lt=1)]
DType = Literal["float32", "bfloat16", "float16", "fp32", "bf16", "fp16", "half"]
SHARED = ("normalize", "lambda", "rescale", "int8_mask", "trim_scope", "mask_strategy", "seed",
          "majority_sign_method", "disjoint", "trim_density", "gamma", "epsilon")


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class ModelParameters(Strict):
    weight: YamlNumber | None = None  # required for every model but the base
    density: Fraction = 1.0
    gamma: Gamma | None = None  # breadcrumbs
    epsilon: Annotated[Number, Field(gt=0, lt=0.5)] | None = None  # della


class ModelEntry(Strict):
    model: str | None = None
    vector: str | None = None
    parameters: ModelParameters = ModelParameters()

    @model_validator(mode="after")
    def _one_source(self) -> ModelEntry:
        if (self.model is None) == (self.vector is None):
            raise ValueError("needs exactly one of 'model' or 'vector'")
        return self


class SharedParameters(Strict):
    normalize: StrictBool | None = None
    lambda_: YamlNumber = Field(1.0, alias="lambda")
    rescale: StrictBool | Literal["l1", "inverse"] | None = None
    int8_mask: StrictBool = False  # mergekit's memory option; the result is the same
    trim_scope: Literal["per_tensor", "global"] = "per_tensor"
    mask_strategy: Literal["random", "magnitude"] = "random"
    seed: StrictInt = 0
    majority_sign_method: Literal["total", "frequency", "sum", "count"] = "total"
    disjoint: Literal["mean", "sum"] | None = None
    trim_density: Fraction | None = None
    gamma: Gamma | None = None
    epsilon: Annotated[Number, Field(gt=0, lt=0.5)] | None = None


class MergeConfig(Strict):
    merge_method: MethodName
    base_model: Annotated[str, Field(min_length=1)]
    models: Annotated[list[ModelEntry], Field(min_length=1)]
    parameters: SharedParameters = SharedParameters()
    dtype: DType | None = None
    out_dtype: DType | None = None
    tokenizer_source: Literal["base"] | None = None
    include: str | list[str] | None = None
    exclude: str | list[str] | None = None
    max_shard_size: Annotated[StrictInt, Field(gt=0)] | str = 5 * 10**9

    @model_validator(mode="before")
    @classmethod
    def _top_level_parameters(cls, data: Any) -> Any:
        """Shared parameters may also sit at the top level (mergekit accepts both)."""
        if not isinstance(data, dict):
            raise ValueError("expected a mapping with merge_method, base_model, models")
        top = {k: data[k] for k in SHARED if k in data}
        if not top:
            return data
        rest = {k: v for k, v in data.items() if k not in top}
        inner = data.get("parameters") or {}
        return {**rest, "parameters": {**top, **inner} if isinstance(inner, dict) else inner}

    @field_validator("max_shard_size")
    @classmethod
    def _bytes(cls, value: int | str) -> int:
        """Sizes as mergekit and transformers write them ("5GB"), read by `parse_size`."""
        try:
            return parse_size(value)
        except MergeError as err:  # the field is named by the schema
            raise ValueError(str(err).removeprefix("max_shard_size ")) from None

    @model_validator(mode="after")
    def _weights_given(self) -> MergeConfig:
        """Weights and lambda finite and within float32 (the output dtype is checked at
        merge time), the field named as `check_weights` names it."""
        for i, entry in enumerate(self.models):
            if entry.model != self.base_model and entry.parameters.weight is None:
                raise ValueError(f"models[{i}].parameters.weight is required")
            if entry.parameters.weight is not None:
                check_weights([entry.parameters.weight], where=f"models[{i}].parameters.weight")
        check_weights([self.parameters.lambda_], where="parameters.lambda")
        if not self.entries:
            raise ValueError("no models besides the base to merge")
        return self

    @property
    def entries(self) -> list[ModelEntry]:
        """The models to merge (mergekit ignores the base model listed among them)."""
        return [e for e in self.models if e.model is None or e.model != self.base_model]

    def merge_params(self) -> dict[str, Any]:
        """Keyword parameters for the engine (`MergeParams` fields)."""
        shared = self.parameters.model_dump(exclude_none=True, exclude={"int8_mask",
                                                                        "trim_scope"})
        shared["lambda_"] = shared.pop("lambda_", 1.0)
        per_model = {"density": tuple(e.parameters.density for e in self.entries)}
        for key in ("gamma", "epsilon"):
            values = [getattr(e.parameters, key) for e in self.entries]
            if any(v is not None for v in values):
                default = shared.get(key, 0.01 if key == "gamma" else 0.15)
                per_model[key] = tuple(default if v is None else v for v in values)
        return {**shared, **per_model}


def load_config(config: str | Path | dict) -> tuple[MergeConfig, str]:
    """Parse a mergekit YAML (file path) or dict into a `MergeConfig`, and where it came from."""
    if isinstance(config, dict):
        data, where = config, "merge config"
    else:
        path = Path(config)
        if not path.is_file():
            raise MergeError(f"{path}: no such merge config (a YAML file)")
        where = str(path)
        try:
            data = yaml.safe_load(path.read_text())
        except yaml.YAMLError as err:
            raise MergeError(f"{where}: malformed YAML ({' '.join(str(err).split())})") from None
        except UnicodeDecodeError as err:
            raise MergeError(f"{where}: not a text file ({err.reason} at byte {err.start})"
                             ) from None
    try:
        return MergeConfig.model_validate(data), where
    except ValidationError as err:
        raise MergeError(one_line(err, where)) from None
