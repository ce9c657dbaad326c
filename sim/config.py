"""Configuration of the simulated grasping world (:class:`SimConfig`) and its validation."""
from __future__ import annotations

from dataclasses import dataclass, field, replace

#: Named domain-randomisation splits. ``train`` draws every factor from the training sets; each
#: ``unseen_*`` split swaps exactly one factor for a disjoint held-out set.
SPLITS = ("train", "unseen_objects", "unseen_backgrounds", "unseen_lighting")

#: Further held-out evaluation splits, outside ``SPLITS`` so that ``--split all`` and the existing
#: tables keep their four columns. ``dense``: 12 objects packed densely, with look-alike
#: distractors of the target (see :func:`sim.scene.sample_scene`).
EXTRA_SPLITS = ("dense",)
ALL_SPLITS = SPLITS + EXTRA_SPLITS

#: Clutter levels: how densely the objects are packed on the table.
CLUTTER_LEVELS = ("sparse", "normal", "dense")

#: Table appearance of the training factor: the split's presets, or procedural (data collection).
TABLE_APPEARANCES = ("presets", "procedural")


class SimConfigError(ValueError):
    """Raised for an invalid simulator argument; the message names the argument."""


def check_split(split: str) -> str:
    """Return ``split`` if it is a known split (:data:`ALL_SPLITS`), else raise
    :class:`SimConfigError` listing them."""
    if split not in ALL_SPLITS:
        raise SimConfigError(f"split={split!r} is unknown; valid splits: {', '.join(ALL_SPLITS)}")
    return split


@dataclass
class SimConfig:
    """Everything that defines a simulated grasping episode apart from the seed.

    Attributes:
        n_objects: inclusive (min, max) number of objects spawned on the table.
        clutter: packing density, one of :data:`CLUTTER_LEVELS`.
        split: default domain-randomisation split used by ``reset`` (see :data:`SPLITS`).
        image_height, image_width: camera resolution (the data contract uses 480x640).
        control_hz: rate of ``step`` (joint targets are interpolated at the physics rate).
        physics_dt: MuJoCo timestep in seconds.
        time_limit_s: episode length limit; ``truncated`` becomes true after it.
        lift_height_m: target lift (relative to its spawn height) that counts as lifted.
        hold_s: how long the target must stay lifted for ``success``.
        shadows: render shadows (slow in software rendering; off by default).
        camera_jitter: randomise the head camera pose slightly per scene.
        render_wrist_seg: also render the wrist segmentation in ``render_cameras``.
        terminate_on_success: end the episode (``terminated``) once ``success`` is reached.
        render_observations: render camera images for observations; when False the images are
            all-zero placeholders of the right shape (fast physics-only runs, e.g. the expert
            benchmark) and ``bbox_head`` is None.
        table_appearance: ``presets`` (the split's table presets) or ``procedural`` (data
            collection: random training tables kept clear of the held-out colours, see
            :func:`sim.randomization.procedural_background`; the ``unseen_backgrounds`` split keeps
            its presets). Only the table changes: objects, lights and camera are the same scene.
        rolling_friction: object contacts with ``condim`` 6 (sliding + torsional + rolling
            friction, coefficients from a published rolling-resistance figure, see
            :func:`sim.mjcf.contact_friction`), so a pushed ball or lying cylinder slows and stops as
            on a real table. Off by default: the shipped checkpoint was trained and its success
            rates measured with the ``condim`` 4 contacts (no rolling resistance); turn it on with
            the next re-collection / retraining.
    """

    n_objects: tuple[int, int] = (4, 10)
    clutter: str = "normal"
    split: str = "train"
    image_height: int = 480
    image_width: int = 640
    control_hz: float = 20.0
    physics_dt: float = 0.002
    time_limit_s: float = 15.0
    lift_height_m: float = 0.10
    hold_s: float = 1.0
    shadows: bool = False
    camera_jitter: bool = True
    render_wrist_seg: bool = False
    terminate_on_success: bool = True
    render_observations: bool = True
    table_appearance: str = "presets"
    rolling_friction: bool = False
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> "SimConfig":
        """Check every field; raises :class:`SimConfigError` naming the bad one."""
        try:
            lo, hi = (int(v) for v in self.n_objects)
        except (TypeError, ValueError):
            raise SimConfigError(f"n_objects must be a (min, max) pair of ints, got {self.n_objects!r}")
        if lo < 1:
            raise SimConfigError(f"n_objects min must be >= 1 (a scene needs a target), got {lo}")
        if hi < lo:
            raise SimConfigError(f"n_objects max ({hi}) must be >= min ({lo})")
        if hi > 12:
            raise SimConfigError(f"n_objects max must be <= 12 (table space), got {hi}")
        self.n_objects = (lo, hi)
        if self.clutter not in CLUTTER_LEVELS:
            raise SimConfigError(f"clutter={self.clutter!r} is unknown; valid: {', '.join(CLUTTER_LEVELS)}")
        check_split(self.split)
        if self.table_appearance not in TABLE_APPEARANCES:
            raise SimConfigError(f"table_appearance={self.table_appearance!r} is unknown; valid: "
                                 f"{', '.join(TABLE_APPEARANCES)}")
        if self.image_height < 16 or self.image_width < 16:
            raise SimConfigError(f"image size must be at least 16x16, got {self.image_height}x{self.image_width}")
        if self.control_hz <= 0:
            raise SimConfigError(f"control_hz must be > 0, got {self.control_hz}")
        if not 0 < self.physics_dt <= 0.01:
            raise SimConfigError(f"physics_dt must be in (0, 0.01] s, got {self.physics_dt}")
        if self.substeps < 1:
            raise SimConfigError("control_hz too high for physics_dt (need >= 1 physics step per control step)")
        if self.time_limit_s <= 0:
            raise SimConfigError(f"time_limit_s must be > 0, got {self.time_limit_s}")
        if self.lift_height_m <= 0 or self.hold_s < 0:
            raise SimConfigError("lift_height_m must be > 0 and hold_s >= 0")
        return self

    @property
    def substeps(self) -> int:
        """Physics steps per control step."""
        return int(round(1.0 / (self.control_hz * self.physics_dt)))

    @property
    def max_steps(self) -> int:
        """Control steps before the episode is truncated."""
        return int(round(self.time_limit_s * self.control_hz))

    def with_(self, **kw) -> "SimConfig":
        """A validated copy with some fields replaced."""
        return replace(self, **kw)
