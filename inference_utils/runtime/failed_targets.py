"""Memory of the objects that failed in earlier attempts of one user prompt.

After a failed attempt the loop records the object (the planner's label and box); the next
``propose_instruction`` lists them so that the planner turns to another object while the prompt
allows one, and comes back to a failed object only when nothing else is left (fewest failures
first). Without it a long prompt ("clear the table") spends all its attempts on the one object the
hand keeps missing (issue 24).
"""
from __future__ import annotations

from typing import Optional

from planner.types import BBox, FailedTarget


class FailedTargets:
    """The failed objects of one prompt, merged by :meth:`planner.FailedTarget.same_object`."""

    def __init__(self) -> None:
        self._items: list[FailedTarget] = []

    def record(self, label: Optional[str], box: BBox) -> FailedTarget:
        """Count one failed attempt on ``(label, box)``; returns the updated record (its box is the
        latest one)."""
        name = (label or "object").strip() or "object"
        for i, item in enumerate(self._items):
            if item.same_object(name, box):
                self._items[i] = FailedTarget(name, box, item.failures + 1)
                return self._items[i]
        self._items.append(FailedTarget(name, box, 1))
        return self._items[-1]

    def as_list(self) -> list[FailedTarget]:
        """The records, in order of first failure."""
        return list(self._items)

    def __len__(self) -> int:
        return len(self._items)
