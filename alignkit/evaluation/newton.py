"""Damped Newton's method for the small convex fits behind leaderboards and length control."""
from __future__ import annotations

from typing import Callable

import numpy as np


def sigmoid(x: np.ndarray | float) -> np.ndarray | float:
    # The tanh form does not overflow for large |x|.
    return 0.5 * (1.0 + np.tanh(0.5 * np.asarray(x)))


def minimize_newton(loss: Callable[[np.ndarray], float],
                    gradient_and_hessian: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]],
                    start: np.ndarray, *, max_iter: int, tol: float, what: str) -> np.ndarray:
    """Minimise a smooth convex `loss` from `start`; each Newton step is halved until the loss goes down.

    Stops when the accepted step moves no coordinate by more than `tol`; raises RuntimeError naming
    `what` after `max_iter` steps without getting there.
    """
    x = np.array(start, dtype=float)
    current = loss(x)
    for _ in range(max_iter):
        gradient, hessian = gradient_and_hessian(x)
        step = np.linalg.solve(hessian, gradient)
        scale = 1.0
        while scale > 1e-8:
            candidate = x - scale * step
            value = loss(candidate)
            if value <= current + 1e-12:
                break
            scale *= 0.5
        x, current = candidate, value
        if np.max(np.abs(scale * step)) < tol:
            return x
    raise RuntimeError(f"{what} did not converge in {max_iter} Newton steps")
