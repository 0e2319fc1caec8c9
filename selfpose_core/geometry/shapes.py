"""Shape checks shared by the geometry functions (kornia's ``KORNIA_CHECK_SHAPE`` idea, plus numpy/torch dispatch).

A shape pattern is a tuple such as ``("*", "N", 3)``: ``"*"`` (first entry only) matches any number of leading
dimensions, an ``int`` must match exactly and a name matches any size (the same name must have the same size
within one call of :func:`check_shape` when a ``dims`` dict is shared between calls).
"""
from __future__ import annotations

from typing import Any, Union

import numpy as np
import torch

from selfpose_core.errors import ShapeError

Array = Union[np.ndarray, torch.Tensor]


def is_torch(x: Any) -> bool:
    """True when ``x`` is a torch tensor (the geometry functions return the type they are given)."""
    return isinstance(x, torch.Tensor)


def check_shape(x: Any, pattern: tuple[int | str, ...], name: str, dims: dict[str, int] | None = None) -> None:
    """Raise :class:`ShapeError` naming ``name`` when ``x``'s shape does not match ``pattern``.

    ``dims`` collects the sizes bound to named dimensions so that several arguments can be checked together.
    """
    shape = tuple(x.shape)
    fixed = pattern[1:] if pattern and pattern[0] == "*" else pattern
    want = "(" + ", ".join(str(p) for p in pattern) + ")"
    if len(shape) < len(fixed) or (pattern[:1] != ("*",) and len(shape) != len(fixed)):
        raise ShapeError(f"{name} must have shape {want}, got {shape}")
    tail = shape[len(shape) - len(fixed):]
    bound = {} if dims is None else dims
    for size, p in zip(tail, fixed):
        if isinstance(p, int):
            if size != p:
                raise ShapeError(f"{name} must have shape {want}, got {shape}")
        elif p in bound and bound[p] != size:
            raise ShapeError(f"{name} must have shape {want} with {p}={bound[p]} like the other arguments, "
                             f"got {shape}")
        else:
            bound[p] = size


def check_min_points(n: int, minimum: int, name: str) -> None:
    """Raise :class:`ShapeError` when an argument holds fewer than ``minimum`` points."""
    if n < minimum:
        raise ShapeError(f"{name} needs at least {minimum} points, got {n}")


def namespace(x: Any) -> Any:
    """The array module of ``x``: ``torch`` for tensors, ``numpy`` otherwise (both share the calls used here)."""
    return torch if is_torch(x) else np


def eye_like(x: Array, n: int) -> Array:
    """An ``(n, n)`` identity with the dtype (and device) of ``x``."""
    if is_torch(x):
        return torch.eye(n, dtype=x.dtype, device=x.device)
    return np.eye(n, dtype=np.result_type(x.dtype, np.float32))


def cross(a: Array, b: Array) -> Array:
    """Cross product over the last axis, numpy or torch."""
    return torch.linalg.cross(a, b, dim=-1) if is_torch(a) else np.cross(a, b)
