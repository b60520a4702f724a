"""A mapping -> a config model, or one `ConfigError` line: pydantic's first error, its location as the dotted
field (`algorithms[0].client_optimizer.lr`), the value, and what the field's type expects."""

from __future__ import annotations

import difflib
import types
from typing import Any, Literal, TypeVar, Union, get_args, get_origin

from pydantic import BaseModel, ValidationError

from hosfl_sim.config.schema import ConfigError

M = TypeVar("M", bound=BaseModel)

# (one, several) of a type, as an error line says it
_NAMES: dict[Any, tuple[str, str]] = {
    int: ("an integer", "integers"),
    float: ("a number", "numbers"),
    str: ("a string", "strings"),
    bool: ("true or false", "true or false values"),
    dict: ("a mapping", "mappings"),
    type(None): ("null", "nulls"),
}


def expected_of(tp: Any, plural: bool = False) -> str:
    """What a value of annotation `tp` must be, in words: `an integer or null`, `one of 'sgd', 'adamw'`."""
    origin = get_origin(tp)
    if origin is Literal:
        choices = ", ".join(repr(a) for a in get_args(tp))
        return choices if len(get_args(tp)) == 1 else ("values from " if plural else "one of ") + choices
    if origin in (Union, types.UnionType):
        return " or ".join(expected_of(a, plural) for a in get_args(tp))
    if origin is list or tp is list:
        args = get_args(tp)
        return "a list" + (f" of {expected_of(args[0], plural=True)}" if args and args[0] is not Any else "")
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return "mappings" if plural else "a mapping"
    if origin is dict:
        return "mappings" if plural else "a mapping"
    one, several = _NAMES.get(tp, (str(tp), str(tp)))
    return several if plural else one


def _unknown_key(key: object, model: type[BaseModel]) -> str:
    known = list(model.model_fields)
    close = difflib.get_close_matches(str(key), known, n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    return f"a known field (unknown key; {hint}known: {', '.join(sorted(known))})"


def config_error(model: type[BaseModel], error: Any) -> ConfigError:
    """The ConfigError of one pydantic error (an `ErrorDetails`) raised validating `model`."""
    tp: Any = model  # the annotation of the field reached so far
    path = ""  # and its dotted name
    for part in error["loc"]:
        if isinstance(tp, type) and issubclass(tp, BaseModel):
            if part not in tp.model_fields:  # extra="forbid": a key no field has
                return ConfigError(f"{path}.{part}" if path else str(part), error["input"], _unknown_key(part, tp))
            path, tp = (f"{path}.{part}" if path else str(part)), tp.model_fields[str(part)].annotation
        elif isinstance(part, int) and get_origin(tp) is list:
            path, tp = f"{path}[{part}]", get_args(tp)[0]
        else:  # a union member's tag: the line names the whole union
            break
    if error["type"] == "finite_number":
        return ConfigError(path, error["input"], "a finite number")
    return ConfigError(path or model.__name__, error["input"], expected_of(tp))


def validate(model: type[M], data: Any) -> M:
    """`model` built from `data`; the first thing wrong raises ConfigError naming its dotted field."""
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise config_error(model, e.errors()[0]) from None
