"""The loop's memory of failed objects (inference_utils/runtime/failed_targets.py)."""
from __future__ import annotations

from inference_utils.runtime.failed_targets import FailedTargets
from planner.types import BBox, FailedTarget


def test_records_merge_the_same_object_and_keep_others_apart():
    memory = FailedTargets()
    memory.record("red ball", BBox(100, 100, 130, 130))
    # nudged by 20 px: the same ball; its box is updated
    assert memory.record("red ball", BBox(120, 105, 150, 135)) == FailedTarget("red ball", BBox(120, 105, 150, 135), 2)
    memory.record("blue cube", BBox(120, 105, 150, 135))    # same place, other label: another object
    memory.record("red ball", BBox(400, 300, 430, 330))      # same label, far away: another object
    memory.record(None, BBox(0, 0, 10, 10))
    assert [(t.label, t.failures) for t in memory.as_list()] == [
        ("red ball", 2), ("blue cube", 1), ("red ball", 1), ("object", 1)]
    assert len(memory) == 4


def test_same_object_rule():
    t = FailedTarget("Red Ball", BBox(100, 100, 130, 130), 1)
    assert t.same_object("red ball ", BBox(102, 101, 131, 129))
    assert t.same_object("red ball", BBox(140, 100, 170, 130))       # centre 40 px away, within 45
    assert not t.same_object("red ball", BBox(150, 100, 180, 130))   # 50 px away
    assert not t.same_object("green ball", BBox(100, 100, 130, 130))
