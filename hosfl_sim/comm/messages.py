"""What crosses the network, by kind: a message names the arrays it carries (shape and dtype), not its bytes.

A role describes what it sends (`Activations.of(a, side)`, `CutGrad.of(a)`: g has a's shape and dtype);
the driver hands the description to the channel, and the ledger alone turns it into bytes. So a payload
that never reaches the driver (activations go actor to actor) is still counted exactly as it would travel.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, ClassVar, TypeVar

import numpy as np

M = TypeVar("M", bound="Message")
Spec = tuple[tuple[int, ...], str]  # (shape, numpy dtype string) of one array


def array_specs(tree: Any) -> tuple[Spec, ...]:
    """(shape, dtype) of every array in a (nested) payload, in order."""
    if isinstance(tree, np.ndarray):
        return ((tuple(tree.shape), tree.dtype.str),)
    if isinstance(tree, dict):
        return tuple(s for v in tree.values() for s in array_specs(v))
    if isinstance(tree, (list, tuple)):
        return tuple(s for v in tree for s in array_specs(v))
    return ()


@dataclass(frozen=True)
class Message:
    kind: ClassVar[str]  # the ledger's category is `<kind>_<direction>`
    arrays: tuple[Spec, ...] = ()
    copies: int = 1  # the same payload sent this many times (replayed records, one per kept copy)

    @classmethod
    def of(cls: type[M], *payloads: Any) -> M:
        """The message carrying these arrays (nested dicts, lists and tuples of them)."""
        return cls(array_specs(payloads))

    @classmethod
    def array(cls: type[M], shape: tuple[int, ...], dtype: Any) -> M:
        """The message carrying one array of this shape and dtype."""
        return cls(((tuple(shape), np.dtype(dtype).str),))

    def times(self: M, n: int) -> M:
        return replace(self, copies=self.copies * int(n))

    def __add__(self: M, other: M) -> M:
        """Both payloads in one message (say a client part and its aux model)."""
        if type(other) is not type(self) or other.copies != 1 or self.copies != 1:
            raise TypeError(f"cannot join a {type(self).__name__} x{self.copies} and a {type(other).__name__}")
        return replace(self, arrays=self.arrays + other.arrays)


class Activations(Message):
    kind = "act"  # smashed data, and the side inputs that travel with it


class CutGrad(Message):
    kind = "grad"


class Labels(Message):
    kind = "labels"


class Scalars(Message):
    kind = "scalar"  # zeroth-order scalars: projections, loss differences, their averages


class Seeds(Message):
    kind = "seed"


class Weights(Message):
    kind = "model"  # any weight vector: a client part, a server copy, an aux model
