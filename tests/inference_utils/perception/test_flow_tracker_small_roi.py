"""Regression: OpenCV's DIS optical flow segfaulted on tiny working images (an object shrunk to a
few pixels at the image border during a closed-loop sim episode); the tracker now keeps its
search region and working image above a minimum size."""
from __future__ import annotations

import numpy as np

from inference_utils.perception.flow_tracker import FlowTracker, _at_least


def test_search_region_is_grown_inside_the_image():
    assert _at_least((630, 470, 640, 480), 64, 640, 480) == (576, 416, 640, 480)
    assert _at_least((300, 200, 310, 210), 64, 640, 480) == (273, 173, 337, 237)
    assert _at_least((100, 100, 300, 300), 64, 640, 480) == (100, 100, 300, 300)
    assert _at_least((0, 0, 5, 5), 64, 40, 30) == (0, 0, 40, 30)


def test_tiny_object_at_the_corner_is_tracked_without_crashing():
    rng = np.random.default_rng(0)
    frame = rng.integers(0, 255, (480, 640, 3), dtype=np.uint8)
    mask = np.zeros((480, 640), bool)
    mask[476:480, 636:640] = True
    tracker = FlowTracker()
    tracker.start(frame, mask)
    for k in range(5):
        out = tracker.track(np.roll(frame, k, axis=1))
        assert out.shape == (480, 640) and out.dtype == bool
