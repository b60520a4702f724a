"""The base of every scenario config: a frozen pydantic model, strict the way YAML needs it.

Strict: a string is never a number ("1" stays refused), true is never an integer, 1 is never true. An integer
where a number is expected is fine (and becomes a float), and so is an integral float where an integer is
expected (`rounds: 30.0` is 30): both are what a YAML writer means. Numbers must be finite.
"""

from __future__ import annotations

import types
from typing import Any, Union, get_args, get_origin

from pydantic import BaseModel, ConfigDict, ValidationInfo, field_validator


def _takes(annotation: Any, tp: type) -> bool:
    """Whether `annotation` (a type, a union of types) accepts an instance of exactly `tp`."""
    if get_origin(annotation) in (Union, types.UnionType):
        return any(_takes(a, tp) for a in get_args(annotation))
    return annotation is tp


def integral(value: Any, annotation: Any) -> Any:
    """`value` with integral floats turned into integers where `annotation` wants an integer and no float."""
    if isinstance(value, float) and value.is_integer() and _takes(annotation, int) and not _takes(annotation, float):
        return int(value)
    if isinstance(value, list) and get_origin(annotation) is list and get_args(annotation):
        (item,) = get_args(annotation)
        return [integral(v, item) for v in value]
    return value


class ConfigModel(BaseModel):
    """A frozen scenario section: unknown keys refused, types strict, numbers finite."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True, allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _integral_floats(cls, value: Any, info: ValidationInfo) -> Any:
        if info.field_name is None:
            return value
        return integral(value, cls.model_fields[info.field_name].annotation)
