"""Shared fixtures of the benchmark tests."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def sim_success():
    """``benchmarks/sim_success.py`` imported as a module (``benchmarks/`` is not a package); the
    torch and OpenCV thread counts its ``--threads`` may change are restored afterwards."""
    import cv2
    import torch

    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        import sim_success as module
    finally:
        sys.path.remove(str(REPO / "benchmarks"))
    threads = (torch.get_num_threads(), cv2.getNumThreads())
    yield module
    torch.set_num_threads(threads[0])
    cv2.setNumThreads(threads[1])
