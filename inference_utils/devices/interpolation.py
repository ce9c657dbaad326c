"""Cubic interpolation of low-rate joint targets into a high-rate streaming trajectory.

The policy emits one arm target per control tick (20 Hz); the RealMan arm wants a
``movej_canfd`` frame every 10 ms. Each new target starts a cubic Hermite segment
(``scipy.interpolate.CubicHermiteSpline``) from the current streamed position and velocity to
the target, reaching it after ``n_points`` frames with the velocity implied by the last two
targets (a Catmull-Rom-like choice, so consecutive targets join with continuous velocity).
A new target arriving mid-segment replans from the current state, so latency stays at one
frame. When the stream runs out of targets the position holds and the velocity decays to zero.
"""
from __future__ import annotations

import numpy as np
from scipy.interpolate import CubicHermiteSpline


class CubicStreamInterpolator:
    """Turns sparse joint targets into frames at a fixed period (not thread-safe by itself)."""

    def __init__(self, n_points: int, period_s: float, dof: int = 7):
        if n_points < 1:
            raise ValueError(f"interpolation_num must be >= 1, got {n_points}")
        if period_s <= 0:
            raise ValueError(f"period must be positive, got {period_s}")
        self.n_points = int(n_points)
        self.period_s = float(period_s)
        self.dof = dof
        self._pos = np.zeros(dof)
        self._vel = np.zeros(dof)
        self._prev_target: np.ndarray | None = None
        self._spline: CubicHermiteSpline | None = None
        self._target: np.ndarray | None = None
        self._t = 0.0
        self._idle_ticks = 0

    @property
    def segment_duration_s(self) -> float:
        """Time to reach a new target."""
        return self.n_points * self.period_s

    @property
    def position(self) -> np.ndarray:
        """Position of the last emitted frame (or the reset position)."""
        return self._pos.copy()

    @property
    def velocity(self) -> np.ndarray:
        """Velocity at the last emitted frame."""
        return self._vel.copy()

    @property
    def active(self) -> bool:
        """True while a segment still has frames to emit."""
        return self._spline is not None

    def reset(self, q: np.ndarray) -> None:
        """Hold at ``q`` with zero velocity and no pending segment."""
        self._pos = np.asarray(q, dtype=np.float64).reshape(self.dof).copy()
        self._vel = np.zeros(self.dof)
        self._prev_target = self._pos.copy()
        self._spline = None
        self._target = None
        self._t = 0.0

    def set_target(self, target: np.ndarray) -> None:
        """Start a new segment from the current state to ``target``."""
        target = np.asarray(target, dtype=np.float64).reshape(self.dof).copy()
        duration = self.segment_duration_s
        prev = self._prev_target if self._prev_target is not None else self._pos
        end_vel = (target - prev) / duration
        self._spline = CubicHermiteSpline(
            [0.0, duration], np.stack([self._pos, target]), np.stack([self._vel, end_vel]), axis=0
        )
        self._target = target
        self._prev_target = target
        self._t = 0.0
        self._idle_ticks = 0

    def next_frame(self) -> np.ndarray | None:
        """Advance one period; returns the frame to send, or ``None`` when idle (holding)."""
        if self._spline is None:
            self._idle_ticks += 1
            self._vel = np.zeros(self.dof)
            return None
        self._t += self.period_s
        duration = self.segment_duration_s
        if self._t >= duration - 1e-9:
            self._pos = self._target.copy()
            self._vel = np.asarray(self._spline(duration, 1), dtype=np.float64)
            self._spline = None
        else:
            self._pos = np.asarray(self._spline(self._t), dtype=np.float64)
            self._vel = np.asarray(self._spline(self._t, 1), dtype=np.float64)
        return self._pos.copy()

    def plan(self, target: np.ndarray) -> np.ndarray:
        """Convenience: start a segment and return all its frames ``(n_points, dof)``."""
        self.set_target(target)
        frames = []
        while self.active:
            frames.append(self.next_frame())
        return np.stack(frames)
