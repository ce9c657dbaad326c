"""Failure recovery of the grasping loop (issue 24 point 2): a small explicit state machine.

The loop feeds :meth:`GraspMonitor.update` once per executed chunk with what every robot can
measure -- the palm height, the measured state (7 normalised joints + 6 hand values, 1 = open)
and the last *commanded* hand values. The monitor never reads simulator ground truth, so the
same logic runs on the real robot and in the simulator.

States and transitions (every transition is logged in ``run.log`` and appended to the attempt's
``recovery`` list in ``summary.json``)::

    idle ──start_attempt──> approach ──commanded closure >= grasp_closure──> grasp
    approach/grasp ──palm above loop.lift_height_m after a descent──> lifted (before the first
        descent a high palm is no lift: the detectors below keep running, e.g. a stall at home) ──(loop: planner verification)──> succeeded
    approach/grasp ──detector fires──> failed            detectors (first that fires):
        empty_hand: measured finger closure >= empty_closure for empty_chunks chunks in a row
                    while the palm is below the lift height (the hand closed on nothing)
        no_lift:    no_lift_chunks chunks in ``grasp`` without the palm rising above the lift height
        stalled:    the measured state moved less than stall_tol (max |Δ|, normalised units)
                    over stall_chunks chunks, palm below the lift height
    failed ──> verify (the planner is asked; verified -> succeeded, the loop places the object --
        except after empty_hand: fully closed fingers hold nothing, a "verified" is overruled)
    verify / lifted-but-refused / timeout ──> release (hand opened) ──> backoff (scripted joint
        move to robot.poses.<safe_pose> through Environment.apply, i.e. the driver's send path
        and its joint and velocity limits) ──> replan (new completion check, box and mask)
        ──> approach ... ; or gave_up once loop.max_attempts attempts were made.

Config (``loop.recovery``; defaults below): ``enabled``, ``grasp_closure`` 0.5, ``empty_closure``
0.9 (measured in the simulator: a hand closed on an object stays at closure 0.14-0.50, an empty
hand reaches 1.0), ``empty_chunks`` 3, ``no_lift_chunks`` 25, ``stall_chunks`` 10, ``stall_tol``
0.01, ``verify_on_failure`` true, ``safe_pose`` home, ``backoff_s`` 1.5.
"""
from __future__ import annotations

import dataclasses
import logging
from typing import Any, Callable, Mapping, Optional

import numpy as np

STATES = ("idle", "approach", "grasp", "lifted", "failed", "verify", "release", "backoff", "replan",
          "succeeded", "gave_up")
#: Allowed transitions (anything else raises: a bug in the loop, never a robot condition).
TRANSITIONS = {
    "idle": {"approach", "gave_up"},
    "approach": {"grasp", "lifted", "failed", "release", "succeeded"},
    "grasp": {"approach", "lifted", "failed", "release", "succeeded"},
    "lifted": {"succeeded", "release", "lifted"},
    "failed": {"verify", "release"},
    "verify": {"succeeded", "release"},
    "release": {"backoff"},
    "backoff": {"replan", "idle", "gave_up"},
    "replan": {"approach", "gave_up", "idle"},
    "succeeded": {"idle"},
    "gave_up": set(),
}
CAUSES = ("empty_hand", "no_lift", "stalled")


@dataclasses.dataclass(frozen=True)
class RecoveryConfig:
    """Thresholds of the failure detectors and the back-off (``loop.recovery``)."""

    enabled: bool = True
    grasp_closure: float = 0.5
    empty_closure: float = 0.9
    empty_chunks: int = 3
    no_lift_chunks: int = 25
    stall_chunks: int = 10
    stall_tol: float = 0.01
    verify_on_failure: bool = True
    safe_pose: str = "home"
    backoff_s: float = 1.5

    @classmethod
    def from_mapping(cls, cfg: Optional[Mapping[str, Any]]) -> "RecoveryConfig":
        """From ``loop.recovery`` (missing keys take the defaults); raises ValueError on bad values."""
        cfg = dict(cfg or {})
        unknown = set(cfg) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"loop.recovery: unknown key(s) {sorted(unknown)}")
        out = cls(**cfg)
        for name in ("grasp_closure", "empty_closure"):
            if not 0.0 < float(getattr(out, name)) <= 1.0:
                raise ValueError(f"loop.recovery.{name}: expected a number in (0, 1], got {getattr(out, name)!r}")
        for name in ("empty_chunks", "no_lift_chunks", "stall_chunks"):
            value = getattr(out, name)
            if isinstance(value, bool) or int(value) != value or not 1 <= int(value) <= 10000:
                raise ValueError(f"loop.recovery.{name}: expected an integer in [1, 10000], got {value!r}")
        if not 0.0 <= float(out.stall_tol) <= 1.0:
            raise ValueError(f"loop.recovery.stall_tol: expected a number in [0, 1], got {out.stall_tol!r}")
        if not 0.0 < float(out.backoff_s) <= 60.0:
            raise ValueError(f"loop.recovery.backoff_s: expected a number in (0, 60], got {out.backoff_s!r}")
        return out


def finger_closure(hand: np.ndarray) -> float:
    """Mean closure of the five fingers (hand values 1 = open; the thumb rotation, index 5, is left out)."""
    return float(1.0 - np.mean(np.asarray(hand, dtype=np.float64)[:5]))


class GraspMonitor:
    """The recovery state machine of one run (see the module docstring).

    Args:
        cfg: detector thresholds.
        lift_height_m: ``loop.lift_height_m`` (palm height that starts the planner's verification).
        log: logger for the transitions (the run's ``run.log``).
        on_transition: called with each transition record (the loop stores it in the attempt's outcome).
    """

    def __init__(self, cfg: RecoveryConfig, lift_height_m: float, log: Optional[logging.Logger] = None,
                 on_transition: Optional[Callable[[dict], None]] = None) -> None:
        self.cfg, self.lift = cfg, float(lift_height_m)
        self.log = log or logging.getLogger(__name__)
        self.on_transition = on_transition
        self.state = "idle"
        self.attempt: Optional[int] = None
        self.transitions: list[dict] = []
        self.cause: Optional[str] = None
        self._reset_counters()

    def _reset_counters(self) -> None:
        self.chunks = 0            # chunks of this attempt
        self.grasp_chunks = 0      # chunks since the hand was commanded closed
        self.empty_run = 0         # consecutive chunks with an empty closed hand
        self._states: list[np.ndarray] = []

    # ------------------------------------------------------------------ transitions
    def to(self, new: str, reason: str = "", **data: Any) -> dict:
        """Move to ``new`` (must be allowed from the current state); log and record it."""
        if new not in TRANSITIONS.get(self.state, set()):
            raise RuntimeError(f"recovery: transition {self.state} -> {new} is not allowed")
        record = {"attempt": self.attempt, "from": self.state, "to": new, "reason": reason,
                  "chunk": self.chunks, **data}
        self.log.info("recovery: attempt %s: %s -> %s%s", self.attempt, self.state, new,
                      f" ({reason})" if reason else "")
        self.state = new
        self.transitions.append(record)
        if self.on_transition is not None:
            self.on_transition(record)
        return record

    def start_attempt(self, attempt: int) -> None:
        """A new attempt starts (after a re-plan or at the start of the run)."""
        if self.state in ("succeeded", "backoff"):
            self.to("idle")
        self.attempt = int(attempt)
        self.cause = None
        self._reset_counters()
        self.to("approach", "controller running on the new box and mask")

    # ------------------------------------------------------------------ detection
    def update(self, hand_height: float, state: np.ndarray, commanded_hand: Optional[np.ndarray],
               armed: bool = True) -> Optional[str]:
        """One executed chunk. Returns a failure cause (:data:`CAUSES`) when a detector fires
        (the monitor is then in ``failed``), else None. ``armed``: the palm has been below the
        lift height (minus the loop's margin) in this attempt -- the loop's own condition for a
        verification -- so a palm above the lift height before the descent is not a lift."""
        if self.state not in ("approach", "grasp", "lifted"):
            return None
        self.chunks += 1
        state = np.asarray(state, dtype=np.float64).reshape(-1)
        above = float(hand_height) > self.lift
        if above and armed:
            if self.state != "lifted":
                self.to("lifted", f"palm at {hand_height:.3f} m, above {self.lift:.3f} m")
            return None
        if self.state == "lifted":
            return None  # came down again: the loop's verification decides
        commanded = finger_closure(commanded_hand) if commanded_hand is not None else 0.0
        if self.state == "approach" and commanded >= self.cfg.grasp_closure:
            self.to("grasp", f"hand commanded closed ({commanded:.2f})")
        elif self.state == "grasp" and commanded < self.cfg.grasp_closure:
            self.to("approach", f"hand commanded open again ({commanded:.2f})")
        if self.state == "grasp":
            self.grasp_chunks += 1
        measured = finger_closure(state[7:13]) if state.size >= 13 else 0.0
        self.empty_run = self.empty_run + 1 if measured >= self.cfg.empty_closure else 0
        self._states = (self._states + [state])[-(self.cfg.stall_chunks + 1):]
        if self.empty_run >= self.cfg.empty_chunks:
            return self._fail("empty_hand", f"fingers closed to {measured:.2f} (>= {self.cfg.empty_closure}) "
                                            f"for {self.empty_run} chunks with nothing between them")
        if self.grasp_chunks >= self.cfg.no_lift_chunks:
            return self._fail("no_lift", f"{self.grasp_chunks} chunks since the hand closed, palm still at "
                                         f"{hand_height:.3f} m")
        if len(self._states) > self.cfg.stall_chunks:
            window = np.stack(self._states)
            motion = float(np.max(np.abs(window - window[0])))
            if motion < self.cfg.stall_tol:
                return self._fail("stalled", f"state moved {motion:.4f} < {self.cfg.stall_tol} over "
                                             f"{self.cfg.stall_chunks} chunks")
        return None

    def _fail(self, cause: str, reason: str) -> str:
        self.cause = cause
        self.to("failed", reason, cause=cause)
        return cause


def back_off(env: Any, pose: str, duration_s: float, hand_open: Optional[np.ndarray] = None) -> np.ndarray:
    """Scripted retreat to ``robot.poses[pose]``: a min-jerk joint ramp streamed one control step
    at a time through :meth:`Environment.apply` (the drivers' ``send`` path: joint limits and the
    joint-speed limit apply), the hand held open; then up to 1 s more while the arm catches up
    with a velocity-limited target. Returns the measured joints (rad, (7,))."""
    from inference_utils.robot_spec import normalize_arm  # noqa: PLC0415

    target = np.asarray(env.poses[pose], dtype=np.float64)          # (7,) rad
    hand = np.ones(6) if hand_open is None else np.asarray(hand_open, dtype=np.float64)
    q0 = np.asarray(env.arm.read_joints(), dtype=np.float64)        # (7,) rad
    n = max(1, int(round(float(duration_s) * env.control_hz)))
    for k in range(1, n + 1):
        u = k / n
        blend = u * u * u * (10 - 15 * u + 6 * u * u)
        env.apply(np.concatenate([normalize_arm(q0 + blend * (target - q0)), hand]))
        env.tick()
    for _ in range(int(env.control_hz)):
        q = np.asarray(env.arm.read_joints(), dtype=np.float64)
        if float(np.max(np.abs(q - target))) < 0.02:
            break
        env.apply(np.concatenate([normalize_arm(target), hand]))
        env.tick()
    return np.asarray(env.arm.read_joints(), dtype=np.float64)
