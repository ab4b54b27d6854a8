"""Merge parameters, validated once by a declarative schema (pydantic).

Every entry point (`merge_deltas`, `merge_vectors`, `applied`, the YAML command) turns its
keyword parameters into one `MergeParams`; an error is one line naming the field and value.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    ValidationError,
    field_validator,
    model_validator,
)

from ..vectors import MergeError
from .registry import METHODS, Method, known_method

Number = StrictFloat | StrictInt
MethodName = Annotated[str, AfterValidator(known_method)]
Fraction = Annotated[Number, Field(gt=0, le=1)]
Epsilon = Annotated[Number, Field(gt=0, lt=0.5)]
SIGN_ALIASES = {"sum": "total", "count": "frequency"}  # mergekit's names for the same


class MergeParams(BaseModel):
    """What a merge may be told; defaults follow mergekit, then the registry row."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    method: MethodName = "task_arithmetic"
    density: Fraction | tuple[Fraction, ...] = 1.0  # keep fraction (DARE: 1 − drop rate)
    gamma: Annotated[Number, Field(ge=0, lt=1)] | tuple[Annotated[Number, Field(ge=0, lt=1)],
                                                        ...] = 0.01  # breadcrumbs outliers
    epsilon: Epsilon | tuple[Epsilon, ...] = 0.15  # della: spread of the keep probabilities
    majority_sign_method: Literal["total", "frequency"] = "total"
    disjoint: Literal["mean", "sum"] | None = None  # TIES: "mean" = normalize true
    normalize: StrictBool | None = None  # None: the method's default
    lambda_: Number = Field(1.0, alias="lambda")
    rescale: StrictBool | Literal["l1", "inverse"] | None = None  # None: the method's default
    mask_strategy: Literal["random", "magnitude"] = "random"  # DARE: random, or keep largest
    seed: StrictInt = 0
    trim_density: Fraction = 1.0  # dare_ties: a TIES trim after the drop (authors' code)
    thresholds: tuple[Number, ...] | None = None  # one magnitude threshold per vector
    accelerate: Literal["numba"] | None = None  # compiled kernels (same results)
    block_elements: Annotated[StrictInt, Field(gt=0)] = 1 << 25  # bigger tensors: row blocks

    @model_validator(mode="before")
    @classmethod
    def _drop_rate(cls, data: Any) -> Any:
        """DARE's drop rate p is density 1 − p (rounded: 1 − 0.8 is 0.19999999999999996)."""
        if not isinstance(data, dict) or "drop_rate" not in data:
            return data
        data = dict(data)
        drop = data.pop("drop_rate")
        if "density" in data:
            raise ValueError("give either drop_rate or density (= 1 − drop_rate), not both")
        drops = drop if isinstance(drop, Sequence) and not isinstance(drop, str) else [drop]
        for p in drops:
            if not isinstance(p, (int, float)) or isinstance(p, bool) or not 0 <= p < 1:
                raise ValueError(f"drop_rate must be in [0, 1), got {p!r}")
        keep = tuple(round(1 - p, 12) for p in drops)
        data["density"] = keep if drops is drop else keep[0]
        return data

    @field_validator("majority_sign_method", mode="before")
    @classmethod
    def _sign_alias(cls, value: Any) -> Any:
        return SIGN_ALIASES.get(value, value) if isinstance(value, str) else value

    @field_validator("lambda_")
    @classmethod
    def _finite(cls, value: float) -> float:
        if not math.isfinite(value):
            raise ValueError(f"lambda must be finite, got {value!r}")
        return value

    @model_validator(mode="after")
    def _fits_the_method(self) -> MergeParams:
        m = self.spec
        if self.disjoint is not None and not m.consensus:
            raise ValueError(f"disjoint applies to sign-electing methods, not {m.name}")
        if self.disjoint is not None and self.normalize is not None and \
                self.normalize != (self.disjoint == "mean"):
            raise ValueError("disjoint='mean' means normalize=true and 'sum' normalize=false")
        if self.rescale and m.sparsification is None:
            raise ValueError(f"rescale applies to sparsifying methods, not {m.name}")
        if self.trim_density < 1 and m.name != "dare_ties":
            raise ValueError(f"trim_density applies to dare_ties only, not {m.name}")
        return self

    # --- resolved values -----------------------------------------------------------------

    @property
    def spec(self) -> Method:
        return METHODS[self.method]

    @property
    def do_normalize(self) -> bool:
        if self.disjoint is not None:
            return self.disjoint == "mean"
        return self.spec.default_normalize if self.normalize is None else self.normalize

    @property
    def rescale_mode(self) -> str | None:
        """"l1" | "inverse" | None (`rescale: true` is mergekit's L1 rescale)."""
        value = self.spec.default_rescale if self.rescale is None else self.rescale
        return "l1" if value is True else (value or None)

    @property
    def sparsification(self) -> str | None:
        if self.spec.sparsification == "random" and self.mask_strategy == "magnitude":
            return "magnitude"  # DARE keeping the largest entries instead of random ones
        return self.spec.sparsification

    def per_vector(self, field: str, k: int) -> tuple[float, ...]:
        value = getattr(self, field)
        values = value if isinstance(value, tuple) else (value,) * k
        if len(values) != k:
            raise MergeError(f"{len(values)} values of {field} for {k} vectors")
        return tuple(float(v) for v in values)


def parse_params(method: str, params: Mapping[str, Any], where: str = "") -> MergeParams:
    """`MergeParams` from keyword parameters; a `MergeError` naming field and value."""
    try:
        return MergeParams.model_validate({"method": method, **params})
    except ValidationError as err:
        raise MergeError(one_line(err, where)) from None


def one_line(err: ValidationError, where: str = "") -> str:
    """The schema's complaint as one line: `where: field.path: message (got value)`.

    Of the errors, the most specific field wins (`density[1]`, not `density`); the
    alternatives of a union at that field are joined ("a valid boolean or 'l1'").
    """
    errors = [(_path(e["loc"]), e) for e in err.errors()]
    depth = max(len(path) for path, _ in errors)
    path = next(path for path, _ in errors if len(path) == depth)
    same = [e for p, e in errors if p == path]
    messages = list(dict.fromkeys(_message(e) for e in same))
    text = messages[0] + "".join(" or " + m.removeprefix("Input should be ")
                                 for m in messages[1:])
    first = same[0]
    value = first.get("input")
    got = ""
    if first["type"] != "missing" and not isinstance(value, dict) and \
            f"got {value!r}" not in text:
        hint = ", a string: YAML reads 1e30 without a decimal point as text, write 1.0e30" \
            if isinstance(value, str) and _looks_numeric(value) else ""
        got = f" (got {value!r}{hint})"
    loc = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in path).lstrip(".")
    head = f"{where}: " if where else ""
    return f"{head}{loc + ': ' if loc else ''}{text}{got}"


def _path(loc: tuple) -> tuple:
    return tuple(p for p in loc if not _is_union_branch(p))


def _message(error: dict) -> str:
    if error["type"] == "extra_forbidden":
        return "unknown field"
    return error["msg"].removeprefix("Value error, ")


def _is_union_branch(part: Any) -> bool:
    """pydantic names union members in error paths (`float`, `tuple[...]`): not fields."""
    return isinstance(part, str) and (part in ("float", "int", "bool", "str", "list")
                                      or "[" in part or part.startswith(("constrained",
                                                                         "function-")))


def _looks_numeric(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def check_weights(weights: Sequence[float], k: int | None = None) -> list[float]:
    for w in weights:
        if not isinstance(w, (int, float)) or isinstance(w, bool) or not math.isfinite(w):
            raise MergeError(f"weights must be finite numbers, got {w!r}")
    if k is not None and len(weights) != k:
        raise MergeError(f"{k} vectors but {len(weights)} weights")
    return [float(w) for w in weights]
