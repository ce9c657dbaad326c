"""Answers to the planner tasks, computed with classical vision (no VLM).

The server sees exactly what a VLM would see: the prompt text and the images. The task is
read from the prompt's first line (``Task: <name>``); the user prompt, instruction, optional
pre-grasp box and coordinate convention are read from the prompt's own sentences.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np

from planner.server.choice import (
    choose_next,
    colour_limit,
    consistent,
    describe,
    failures_of,
    in_reach,
    locate,
    targets,
    where,
    width_m,
)
from planner.server.held import coloured_fraction, head_table_lab, held_object_fraction, palm_colour_fraction
from planner.server.segmentation import analyse_scene
from planner.server.vocab import parse_text
from planner.types import BBox

TASKS = ("understand_prompt", "propose_instruction", "predict_bbox", "verify_grasp", "check_completion")
_TASK_LINE = re.compile(r"^\s*Task:\s*([a-z_]+)\s*$", re.IGNORECASE | re.MULTILINE)
_USER_PROMPT = re.compile(r"^\s*User prompt:\s*(.+)$", re.MULTILINE)
_INSTRUCTION = re.compile(r"^\s*Grasping instruction:\s*(.+)$", re.MULTILINE)
_PRE_BOX = re.compile(r"box\s*\[\s*(-?\d+)\s*,\s*(-?\d+)\s*,\s*(-?\d+)\s*,\s*(-?\d+)\s*\]")
_NORMALISED = re.compile(r"normali[sz]ed to 0\s*[-\u2013]\s*1000", re.IGNORECASE)

MIN_IMAGES = {"understand_prompt": 0, "propose_instruction": 2, "predict_bbox": 1,
              "verify_grasp": 2, "check_completion": 2}


class TaskError(ValueError):
    """The request is well-formed JSON but not a planner prompt this server can answer."""


@dataclass
class TaskRequest:
    """The parts of a chat request the task handlers use."""

    task: str
    text: str
    images: list[np.ndarray]


def recognise_task(text: str) -> str:
    """Return the task named on a ``Task: <name>`` line; ``TaskError`` if absent or unknown."""
    match = _TASK_LINE.search(text or "")
    if match is None:
        raise TaskError("the prompt has no 'Task: <name>' line; this offline planner answers "
                        f"only DexGraspVLA planner prompts ({', '.join(TASKS)})")
    task = match.group(1).lower()
    if task not in TASKS:
        raise TaskError(f"unknown task {task!r}; known tasks: {', '.join(TASKS)}")
    return task


def _field(pattern: re.Pattern, text: str, name: str) -> str:
    match = pattern.search(text)
    if match is None:
        raise TaskError(f"the prompt lacks the '{name}:' line")
    return match.group(1).strip()


def _json(obj: dict[str, Any]) -> str:
    return json.dumps(obj, ensure_ascii=False)


def answer(request: TaskRequest) -> str:
    """Compute the reply text (a JSON object, as the prompt asks) for a planner request."""
    need = MIN_IMAGES[request.task]
    if len(request.images) < need:
        raise TaskError(f"task {request.task} needs {need} image(s), got {len(request.images)}")
    handler = {
        "understand_prompt": _understand,
        "propose_instruction": _propose,
        "predict_bbox": _bbox,
        "verify_grasp": _verify,
        "check_completion": _completion,
    }[request.task]
    return _json(handler(request))


def _understand(req: TaskRequest) -> dict[str, Any]:
    prompt = _field(_USER_PROMPT, req.text, "User prompt")
    parsed = parse_text(prompt)
    if not parsed.has_filter:
        targets = ["all objects"]
        if req.images:
            targets = [o.label for o in analyse_scene(req.images[0]).objects] or targets
        return {"reasoning": "The prompt asks for every object on the table.", "targets": targets, "all_objects": True}
    words = [" ".join(filter(None, [c, s])) for c in (parsed.colours or [""]) for s in (parsed.shapes or ["object"])]
    targets = words
    if req.images:
        found = [o.label for o in targets(analyse_scene(req.images[0]), parsed)]
        targets = found or words
    return {"reasoning": f"The prompt restricts the targets to: {', '.join(words)}.", "targets": targets,
            "all_objects": False}


def _propose(req: TaskRequest) -> dict[str, Any]:
    parsed = parse_text(_field(_USER_PROMPT, req.text, "User prompt"))
    scene = analyse_scene(req.images[1])
    failures = failures_of(scene, req.text)
    chosen = choose_next(scene, targets(scene, parsed), failures=failures)
    if chosen is None:
        return {"reasoning": "No object that the prompt asks for is left on the table.", "target": None,
                "instruction": "No target object is left on the table."}
    others = len(scene.objects) - 1
    return {
        "reasoning": f"{len(scene.objects)} object(s) visible; the {chosen.label} is the rightmost "
                     f"reachable target (crowding {chosen.crowding:.2f}, about {100 * width_m(chosen, scene):.0f} cm "
                     f"wide, {'in' if in_reach(chosen, scene) else 'outside'} the arm's reach, "
                     f"{others} other object(s)"
                     + (f"; {len(failures)} object(s) failed before, tried again last" if failures else "")
                     + ").",
        "target": chosen.label,
        "instruction": describe(chosen, scene),
    }


def _bbox(req: TaskRequest) -> dict[str, Any]:
    instruction = _field(_INSTRUCTION, req.text, "Grasping instruction")
    image = req.images[0]
    scene = analyse_scene(image)
    obj = locate(scene, parse_text(instruction))
    if obj is None:
        return {"bbox_2d": None, "label": "", "description": "No object matching the instruction is visible."}
    x1, y1, x2, y2 = obj.bbox
    if _NORMALISED.search(req.text):
        h, w = image.shape[:2]
        box = [round(x1 * 1000 / w), round(y1 * 1000 / h), round(x2 * 1000 / w), round(y2 * 1000 / h)]
    else:
        box = [x1, y1, x2, y2]
    return {"bbox_2d": box, "label": obj.label, "description": f"A {obj.label} {where(obj, scene)}."}


#: Held: the named colour fills more than COLOUR_HELD of the wrist view at the palm, or a non-table
#: blob between the fingers more than BLOB_HELD. Small objects held between the fingers fill only
#: ~2 % of the view; white/grey objects are hard to name against a light table, hence the blob.
#: Empty hand at home: <= 0.013 over 12 sim scenes.
COLOUR_HELD = 0.01
BLOB_HELD = 0.025


@dataclass
class GraspEvidence:
    """What ``verify_grasp`` measures in the head and wrist images (fractions of the wrist view)."""

    colour: Optional[str]       # the instruction's colour, None when it names none
    still_there: bool           # an object of that colour still lies where the pre-grasp box was
    colour_fraction: float
    blob_fraction: float

    @property
    def held(self) -> bool:
        return self.colour_fraction > COLOUR_HELD or self.blob_fraction > BLOB_HELD

    @property
    def success(self) -> bool:
        return self.held and not self.still_there

    def reasoning(self) -> str:
        name = self.colour + " object" if self.colour else "target"
        frac = max(self.colour_fraction, self.blob_fraction)
        if self.still_there:
            return f"The {name} is still lying at its original place on the table."
        if self.held:
            return f"The {name} fills {frac:.0%} of the wrist view, between the fingers, and is gone from the table."
        return f"The wrist view shows no {name} in the hand ({frac:.1%} of the view)."


def grasp_evidence(req: TaskRequest) -> GraspEvidence:
    """The measurements behind a ``verify_grasp`` answer (images: head, wrist)."""
    parsed = parse_text(_field(_INSTRUCTION, req.text, "Grasping instruction"))
    head, wrist = req.images[0], req.images[1]
    scene = analyse_scene(head)
    colour = parsed.colours[0] if parsed.colours else None
    box_match = _PRE_BOX.search(req.text)
    still_there = False
    if box_match:
        before = BBox(*(int(v) for v in box_match.groups()))
        still_there = any(BBox(*obj.bbox).iou(before) > 0.3 for obj in scene.objects
                          if colour is None or obj.colour == colour)
    table_lab = head_table_lab(head, scene.table_mask)
    frac = (coloured_fraction(wrist, table_lab) if colour is None
            else palm_colour_fraction(wrist, colour, table_lab))
    return GraspEvidence(colour, still_there, frac, held_object_fraction(wrist, table_lab))


def _verify(req: TaskRequest) -> dict[str, Any]:
    evidence = grasp_evidence(req)
    return {"reasoning": evidence.reasoning(), "success": evidence.success}


def _completion(req: TaskRequest) -> dict[str, Any]:
    parsed = parse_text(_field(_USER_PROMPT, req.text, "User prompt"))
    first, now = analyse_scene(req.images[0]), analyse_scene(req.images[1])
    if parsed.single:
        # "grasp the X": done once one object of X's colour has gone. Colour only: a pushed
        # cylinder that falls over outlines as a block, and must not count as gone.
        limit = colour_limit(first, parsed)
        before, after = consistent(first, parsed, False, limit), consistent(now, parsed, False, limit)
        done = not after or len(after) < len(before)
        reasoning = (f"{len(after)} object(s) fit the description now, {len(before)} at the start: "
                     + ("the named object is gone from the table." if done else "it is still there."))
        return {"reasoning": reasoning, "remaining": [] if done else [o.label for o in after], "done": done}
    initial = targets(first, parsed)
    remaining = targets(now, parsed)
    what = "target objects" if parsed.has_filter else "objects"
    if remaining:
        reasoning = (f"{len(remaining)} of the {what} remain on the table "
                     f"(there were {len(initial)} at the start).")
    else:
        reasoning = f"No {what} remain on the table (there were {len(initial)} at the start)."
    return {"reasoning": reasoning, "remaining": [o.label for o in remaining], "done": not remaining}
