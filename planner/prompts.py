"""Prompt construction for the planner tasks.

Each prompt is a list of parts, text or a named image. The first line of the first text
part is always ``Task: <task>``: a VLM reads it as a heading, and the offline server uses
it to recognise the task without any hidden side channel. Every prompt states the exact
JSON reply it expects, so replies can be parsed strictly.

The wording is our own; it carries the selection principles of the DexGraspVLA paper
(prefer right, then centre, then left; avoid blocked objects and objects whose removal
would topple others).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence, Union

import numpy as np

from planner.types import BBox, BBoxFormat, FailedTarget, Task

SYSTEM_PROMPT = (
    "You are the high-level planner of a robot with one arm and a five-fingered hand that "
    "picks objects from a table. You look at camera images and answer with a single JSON "
    "object exactly in the requested format, without any other text."
)

SELECTION_PRINCIPLES = (
    "How to choose the next object:\n"
    "1. Consider only objects that the user prompt asks for and that are still on the table.\n"
    "2. Take an object on the right side of the table if there is one; otherwise one in the "
    "middle; only when neither exists, one on the left.\n"
    "3. Skip objects that are hemmed in, covered or blocked by other objects: the hand needs "
    "free space around the target.\n"
    "4. Skip objects that support or lean against other objects, so that lifting them does "
    "not knock anything over."
)


@dataclass(frozen=True)
class ImagePart:
    """A named image inside a prompt (``role`` such as ``current_head``)."""

    role: str
    image: np.ndarray


PromptPart = Union[str, ImagePart]


@dataclass(frozen=True)
class Prompt:
    """A complete prompt: system text plus ordered user parts."""

    task: Task
    system: str
    parts: list[PromptPart]

    @property
    def images(self) -> list[ImagePart]:
        """The image parts in order."""
        return [p for p in self.parts if isinstance(p, ImagePart)]


def _header(task: Task) -> str:
    return f"Task: {task.value}\n"


def understand_prompt(user_prompt: str, initial_head: Optional[np.ndarray] = None) -> Prompt:
    """Prompt asking which objects the user prompt refers to (optionally with the table image)."""
    text = (
        _header(Task.UNDERSTAND_PROMPT)
        + f"User prompt: {user_prompt}\n"
        + "Work out which objects on the table this prompt asks the robot to grasp. If it asks "
        "for everything (for example 'clear the table'), set all_objects to true.\n"
    )
    parts: list[PromptPart] = [text]
    if initial_head is not None:
        parts += ["The table as seen by the head camera:", ImagePart("initial_head", initial_head)]
    parts.append(
        "Reply with JSON only:\n"
        '{"reasoning": "<one or two sentences>", "targets": ["<colour> <shape>", ...], '
        '"all_objects": true or false}'
    )
    return Prompt(Task.UNDERSTAND_PROMPT, SYSTEM_PROMPT, parts)


def failed_targets_text(avoid: Sequence[FailedTarget]) -> str:
    """The prompt lines listing objects that earlier attempts failed to grasp ('' when none).

    One ``- avoid: <label> at box [x1, y1, x2, y2], failed <n> time(s)`` line per object, boxes in
    absolute pixels of image 2 (the offline planner reads these lines; a VLM reads the sentence)."""
    if not avoid:
        return ""
    lines = ["Objects the robot already failed to grasp in this task (boxes in absolute pixels "
             "[x1, y1, x2, y2] of image 2 when they were tried; a failed grasp may have nudged them). "
             "Choose another object the user prompt asks for; pick one of these again only when no "
             "other is left, the one with the fewest failures first:"]
    for t in avoid:
        lines.append(f"- avoid: {t.label} at box [{t.box.x1}, {t.box.y1}, {t.box.x2}, {t.box.y2}], "
                     f"failed {int(t.failures)} time(s)")
    return "\n".join(lines) + "\n"


def propose_instruction(user_prompt: str, initial_head: np.ndarray, current_head: np.ndarray,
                        avoid: Sequence[FailedTarget] = ()) -> Prompt:
    """Prompt asking for one sentence that names the next object to grasp; ``avoid`` lists the
    objects earlier attempts of this prompt failed on (:func:`failed_targets_text`)."""
    return Prompt(
        Task.PROPOSE_INSTRUCTION,
        SYSTEM_PROMPT,
        [
            _header(Task.PROPOSE_INSTRUCTION)
            + f"User prompt: {user_prompt}\n"
            + "Image 1 is the head camera before the robot did anything:",
            ImagePart("initial_head", initial_head),
            "Image 2 is the head camera now:",
            ImagePart("current_head", current_head),
            "Pick the single best object in image 2 for the robot to grasp next. Recognise the "
            "objects with everyday knowledge (cups, bottles, fruit, boxes, balls, ...).\n"
            + SELECTION_PRINCIPLES
            + "\n" + failed_targets_text(avoid)
            + "Write the instruction as one English sentence that names the object's colour, "
            "its shape and where it is on the table, for example: "
            "'Grasp the green cylinder on the right side of the table, near the front.'\n"
            "Reply with JSON only:\n"
            '{"reasoning": "<short>", "target": "<colour> <shape>", "instruction": "<the sentence>"}',
        ],
    )


def _box_convention(fmt: BBoxFormat, width: int, height: int) -> str:
    if fmt is BBoxFormat.NORMALIZED_1000:
        return (
            "Coordinates: normalised to 0-1000, i.e. x = 1000 * column / image width and "
            "y = 1000 * row / image height, so the whole image spans 0..1000 on both axes."
        )
    return (
        f"Coordinates: absolute pixels of this {width}x{height} image (x is the column from 0 "
        f"to {width - 1}, y is the row from 0 to {height - 1}, origin at the top-left)."
    )


def predict_bbox(instruction: str, current_head: np.ndarray, fmt: BBoxFormat) -> Prompt:
    """Prompt asking for the box of the object the instruction names."""
    height, width = current_head.shape[:2]
    return Prompt(
        Task.PREDICT_BBOX,
        SYSTEM_PROMPT,
        [
            _header(Task.PREDICT_BBOX)
            + f"Grasping instruction: {instruction}\n"
            + "Find the object this instruction refers to in the head camera image:",
            ImagePart("current_head", current_head),
            "Choose exactly one visible object, the best match for the instruction's colour, "
            "shape and position. Do not invent an object that is not visible.\n"
            + _box_convention(fmt, width, height)
            + "\nThe box must enclose the whole object tightly, with x1 < x2 and y1 < y2.\n"
            "Reply with JSON only:\n"
            '{"bbox_2d": [x1, y1, x2, y2], "label": "<2-4 word name>", '
            '"description": "<appearance and position>"}',
        ],
    )


def verify_grasp(
    instruction: str,
    current_head: np.ndarray,
    current_wrist: np.ndarray,
    target_bbox: Optional[BBox] = None,
) -> Prompt:
    """Prompt asking whether the robot is now holding the target object."""
    where = ""
    if target_bbox is not None:
        where = (
            "Before the grasp, the target lay inside the head-image box "
            f"[{target_bbox.x1}, {target_bbox.y1}, {target_bbox.x2}, {target_bbox.y2}] "
            "(absolute pixels, x1, y1, x2, y2).\n"
        )
    return Prompt(
        Task.VERIFY_GRASP,
        SYSTEM_PROMPT,
        [
            _header(Task.VERIFY_GRASP)
            + f"Grasping instruction: {instruction}\n"
            + where
            + "The head camera now shows:",
            ImagePart("current_head", current_head),
            "The wrist camera (close to the fingers) now shows:",
            ImagePart("current_wrist", current_wrist),
            "Has the hand picked up the target object and is it holding it securely? Check "
            "whether the target is still lying on the table and whether it is between the "
            "fingers in the wrist view. Decide success last, after the reasoning.\n"
            "Reply with JSON only:\n"
            '{"reasoning": "<one or two sentences>", "success": true or false}',
        ],
    )


def check_completion(user_prompt: str, initial_head: np.ndarray, current_head: np.ndarray) -> Prompt:
    """Prompt asking whether the whole user prompt has been carried out."""
    return Prompt(
        Task.CHECK_COMPLETION,
        SYSTEM_PROMPT,
        [
            _header(Task.CHECK_COMPLETION)
            + f"User prompt: {user_prompt}\n"
            + "Image 1 is the head camera before the robot did anything:",
            ImagePart("initial_head", initial_head),
            "Image 2 is the head camera now:",
            ImagePart("current_head", current_head),
            "Compare the two images. Consider only real objects on the table (ignore the robot "
            "arm and hand). The prompt is done when no object it asks for is left on the table; "
            "it is not done while any such object remains. List the remaining target objects.\n"
            "Reply with JSON only:\n"
            '{"reasoning": "<one or two sentences>", "remaining": ["<colour> <shape>", ...], '
            '"done": true or false}',
        ],
    )
