"""The shape-check helper other modules rely on: wildcards, named dimensions bound across arguments."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from selfpose_core.errors import ShapeError
from selfpose_core.geometry.shapes import check_min_points, check_shape


def test_patterns():
    check_shape(np.zeros((2, 5, 3)), ("*", "N", 3), "X")
    check_shape(np.zeros((5, 3)), ("*", "N", 3), "X")
    check_shape(torch.zeros(4, 4), (4, 4), "T")
    check_shape(torch.zeros(2, 3), torch.Size([2, 3]), "x")
    with pytest.raises(ShapeError, match=r"X must have shape \(\*, N, 3\), got \(5, 2\)"):
        check_shape(np.zeros((5, 2)), ("*", "N", 3), "X")
    with pytest.raises(ShapeError, match="T"):
        check_shape(np.zeros((2, 4, 4)), (4, 4), "T")  # no wildcard: the rank must match
    with pytest.raises(ShapeError, match="X"):
        check_shape(np.zeros(3), ("*", "N", 3), "X")


def test_named_dimensions_are_bound_across_arguments():
    dims: dict[str, int] = {}
    check_shape(np.zeros((7, 3)), ("N", 3), "pts3d", dims)
    check_shape(np.zeros((7, 2)), ("N", 2), "pts2d", dims)
    assert dims == {"N": 7}
    with pytest.raises(ShapeError, match="pts2d .* N=7"):
        check_shape(np.zeros((6, 2)), ("N", 2), "pts2d", dims)
    with pytest.raises(ShapeError, match="at least 4 points, got 3"):
        check_min_points(3, 4, "pts3d")
