"""What "equal up to float rounding" means in the tests of fused loss nodes."""

from __future__ import annotations

import torch


def no_worse(got: torch.Tensor, before: torch.Tensor, exact: torch.Tensor) -> bool:
    """Whether ``got`` (a fused node's float32 result) is as close to ``exact`` (the previous
    operations in float64) as ``before`` (the previous operations in float32) is: within twice
    its error plus 1e-6 of ``exact``'s norm. A different rounding passes, a different formula
    does not; the test is on the error, not relative to ``got`` itself, because a summed gradient
    (a bias's) can be far smaller than its summands and so its rounding far from small relative
    to itself."""
    exact = exact.double()
    error, error_before = float((got.double() - exact).norm()), float((before.double() - exact).norm())
    return error <= 2 * error_before + 1e-6 * float(exact.norm())
