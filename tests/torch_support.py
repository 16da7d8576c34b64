"""torch in the tests of the core: the same functions on torch tensors as on numpy arrays."""

from __future__ import annotations

import numpy as np
import pytest

try:
    import torch
except ImportError:  # the numpy tests still run
    torch = None

needs_torch = pytest.mark.skipif(torch is None, reason="torch is not installed")


def assert_torch_matches(result, expected, like, *, scaled: bool = False) -> None:
    """``result`` is a float64 tensor on the device of ``like`` that equals numpy's ``expected``.

    Within 1e-12, relative, and absolute for values near 0 (MI, clipped mass); ``scaled`` makes
    the absolute tolerance relative to the largest entry (distances of large values).
    """
    assert isinstance(result, torch.Tensor)
    assert result.dtype == torch.float64 and result.device == like.device
    scale = max(1.0, float(np.abs(expected).max())) if scaled else 1.0
    np.testing.assert_allclose(result.cpu().numpy(), expected, rtol=1e-12, atol=1e-12 * scale)
