"""Typed results and errors of the DexGraspVLA planner client.

Every planner task returns one of the frozen dataclasses below, so callers never have to
dig through raw model replies. Boxes are always in absolute pixel coordinates of the
image that was sent, whatever convention the model itself used.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Optional


class Task(str, enum.Enum):
    """The planner tasks. The value is the tag written on the first line of each prompt."""

    UNDERSTAND_PROMPT = "understand_prompt"
    PROPOSE_INSTRUCTION = "propose_instruction"
    PREDICT_BBOX = "predict_bbox"
    VERIFY_GRASP = "verify_grasp"
    CHECK_COMPLETION = "check_completion"


class BBoxFormat(str, enum.Enum):
    """How the model writes box coordinates.

    ``ABSOLUTE``: integer pixels of the image as sent (Qwen2.5-VL).
    ``NORMALIZED_1000``: each coordinate scaled to 0..1000 of the image size (Qwen-VL).
    """

    ABSOLUTE = "absolute"
    NORMALIZED_1000 = "normalized_1000"


class PlannerError(RuntimeError):
    """A planner task failed: the server was unreachable or its reply could not be used.

    Attributes:
        task: the task that failed (``Task`` value), or ``None`` for set-up failures.
        reply: the last raw reply text, when one was received.
    """

    def __init__(self, message: str, task: Optional[str] = None, reply: Optional[str] = None):
        self.task = task
        self.reply = reply
        text = message if task is None else f"[{task}] {message}"
        if reply is not None:
            quoted = reply if len(reply) <= 600 else reply[:600] + "...(truncated)"
            text += f"\nReply was: {quoted!r}"
        super().__init__(text)


@dataclass(frozen=True)
class BBox:
    """An axis-aligned box in absolute pixels, ``x1 < x2`` and ``y1 < y2`` (exclusive ends)."""

    x1: int
    y1: int
    x2: int
    y2: int

    @property
    def width(self) -> int:
        """Box width in pixels."""
        return self.x2 - self.x1

    @property
    def height(self) -> int:
        """Box height in pixels."""
        return self.y2 - self.y1

    @property
    def area(self) -> int:
        """Box area in square pixels."""
        return max(0, self.width) * max(0, self.height)

    @property
    def center(self) -> tuple[float, float]:
        """Box centre ``(x, y)``."""
        return ((self.x1 + self.x2) / 2.0, (self.y1 + self.y2) / 2.0)

    def as_list(self) -> list[int]:
        """``[x1, y1, x2, y2]`` as plain ints (the reference code's ``bbox_2d`` layout)."""
        return [self.x1, self.y1, self.x2, self.y2]

    def iou(self, other: "BBox") -> float:
        """Intersection over union with another box (0 when disjoint)."""
        ix = max(0, min(self.x2, other.x2) - max(self.x1, other.x1))
        iy = max(0, min(self.y2, other.y2) - max(self.y1, other.y1))
        inter = ix * iy
        union = self.area + other.area - inter
        return float(inter) / union if union > 0 else 0.0


@dataclass(frozen=True)
class FailedTarget:
    """An object the robot failed to grasp earlier in the same user prompt (runtime memory).

    Attributes:
        label: the planner's short name of the object when it was tried (e.g. ``"red ball"``).
        box: its box on the head image when it was last tried, absolute pixels (it may have been
            nudged since).
        failures: failed attempts on it so far (>= 1).
    """

    label: str
    box: BBox
    failures: int = 1

    def same_object(self, label: str, box: BBox) -> bool:
        """Whether ``(label, box)`` is this object again: same label and a box that overlaps
        (IoU > 0.2) or whose centre lies within 1.5 box sizes of this one's (a missed grasp often
        pushes the object a few centimetres)."""
        if label.strip().lower() != self.label.strip().lower():
            return False
        if box.iou(self.box) > 0.2:
            return True
        (ax, ay), (bx, by) = box.center, self.box.center
        reach = 1.5 * max(self.box.width, self.box.height, 1)
        return (ax - bx) ** 2 + (ay - by) ** 2 <= reach ** 2


@dataclass(frozen=True)
class PromptUnderstanding:
    """Result of ``understand_prompt``: which objects the user prompt asks for.

    Attributes:
        targets: short descriptions of the target objects or categories (e.g. ``["red cube"]``).
        all_objects: True when the prompt covers every object on the table ("clear the table").
        reasoning: the model's explanation (may be empty).
        raw: the raw reply text.
    """

    targets: list[str]
    all_objects: bool
    reasoning: str = ""
    raw: str = field(default="", repr=False)


@dataclass(frozen=True)
class Instruction:
    """Result of ``propose_instruction``: one sentence naming the next object to grasp.

    Attributes:
        instruction: e.g. "Grasp the blue cube on the right side of the table."
        target: short label of the chosen object, when the model gave one.
        reasoning: the model's explanation (may be empty).
        raw: the raw reply text.
    """

    instruction: str
    target: Optional[str] = None
    reasoning: str = ""
    raw: str = field(default="", repr=False)


@dataclass(frozen=True)
class BoxPrediction:
    """Result of ``predict_bbox``.

    Attributes:
        bbox: the validated box, clamped to the image, in absolute pixels.
        label: short 2-4 word name of the object.
        description: natural-language description of its appearance and position.
        raw_bbox: the coordinates exactly as the model wrote them.
        raw: the raw reply text.
    """

    bbox: BBox
    label: str
    description: str
    raw_bbox: tuple[float, float, float, float] = field(default=(0.0, 0.0, 0.0, 0.0))
    raw: str = field(default="", repr=False)


@dataclass(frozen=True)
class GraspVerification:
    """Result of ``verify_grasp``: whether the target is held in the hand."""

    success: bool
    reasoning: str = ""
    raw: str = field(default="", repr=False)


@dataclass(frozen=True)
class CompletionCheck:
    """Result of ``check_completion``: whether the whole user prompt is done."""

    done: bool
    reasoning: str = ""
    remaining: list[str] = field(default_factory=list)
    raw: str = field(default="", repr=False)
