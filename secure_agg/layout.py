"""Layout of several named float arrays flattened into one ring vector (sorted by name)."""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from .errors import InputError

__all__ = ["VectorLayout"]


@dataclass(frozen=True)
class VectorLayout:
    """Names and shapes of the arrays in one secure sum, in sorted-name order."""

    entries: tuple[tuple[str, tuple[int, ...]], ...]

    def __post_init__(self) -> None:
        names = [name for name, _ in self.entries]
        if names != sorted(set(names)):
            raise ValueError(f"entries must have unique names in sorted order, got {names}")
        for name, shape in self.entries:
            if not all(isinstance(d, int) and d >= 0 for d in shape):
                raise ValueError(f"entries: shape of {name!r} must be non-negative ints, got {shape}")

    @classmethod
    def of(cls, arrays: Mapping[str, npt.ArrayLike]) -> VectorLayout:
        """Layout of a dict of arrays (sorted by name)."""
        return cls(tuple((name, tuple(np.shape(arrays[name]))) for name in sorted(arrays)))

    @classmethod
    def flat(cls, size: int, name: str = "x") -> VectorLayout:
        """Layout of a single flat vector."""
        return cls(((name, (size,)),))

    @property
    def size(self) -> int:
        """Total number of values."""
        return sum(math.prod(shape) for _, shape in self.entries)

    def slices(self) -> Iterator[tuple[str, tuple[int, ...], slice]]:
        """Yield ``(name, shape, slice into the flat vector)`` in order."""
        start = 0
        for name, shape in self.entries:
            stop = start + math.prod(shape)
            yield name, shape, slice(start, stop)
            start = stop

    def check(self, arrays: Mapping[str, npt.ArrayLike]) -> None:
        """Raise :class:`InputError` unless ``arrays`` has exactly these names and shapes."""
        if sorted(arrays) != [name for name, _ in self.entries]:
            raise InputError(f"expected arrays {[n for n, _ in self.entries]}, got {sorted(arrays)}")
        for name, shape in self.entries:
            if tuple(np.shape(arrays[name])) != shape:
                raise InputError(f"array {name!r} has shape {np.shape(arrays[name])}, expected {shape}")

    def split(self, flat: npt.NDArray[np.float64]) -> dict[str, npt.NDArray[np.float64]]:
        """Cut a flat vector back into named arrays (views)."""
        if flat.shape != (self.size,):
            raise InputError(f"flat vector has shape {flat.shape}, expected ({self.size},)")
        return {name: flat[sl].reshape(shape) for name, shape, sl in self.slices()}
