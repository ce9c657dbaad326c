"""Perception: box→mask segmentation and mask tracking for the target object.

Back-ends (chosen by configuration, see :mod:`.factory`):

=========== ======================= ===================================================
component   weight-free (default)   learned (optional)
=========== ======================= ===================================================
segmenter   ``grabcut`` (OpenCV)    ``sam``: ``pip install -e .[sam]`` + a local SAM checkpoint
                                    ``sam2``: SAM 2 (see docs/perception.md) + a local checkpoint
tracker     ``flow`` (flow+colour)  ``cutie``: a Cutie clone + ``cutie-base-mega.pth``
                                    ``sam2``: SAM 2 streaming video segmentation + checkpoint
=========== ======================= ===================================================

Using Cutie (it is not on PyPI)::

    git clone https://github.com/hkchengrex/Cutie.git
    # set tracker.code_path to the clone (or `pip install -e Cutie`, which needs GitHub access)
    # weights: download manually, then set tracker.weights to the file (default location
    # <torch hub dir>/weights/cutie-base-mega.pth)
    # https://github.com/hkchengrex/Cutie/releases/download/v1.0/cutie-base-mega.pth

SAM checkpoints (download manually, set ``segmenter.checkpoint``):
https://dl.fbaipublicfiles.com/segment_anything/sam_vit_h_4b8939.pth (``vit_l``: sam_vit_l_0b3195.pth,
``vit_b``: sam_vit_b_01ec64.pth).

Example::

    seg = build_segmenter({"segmenter": {"backend": "grabcut"}})
    trk = build_tracker({"tracker": {"backend": "flow", "reseg_every": 10}})
    mask0 = seg.segment(head_bgr, box_xyxy)
    trk.start(head_bgr, mask0)
    mask_t = trk.track(next_head_bgr)
"""
from .base import MaskTracker, Segmenter
from .cutie_tracker import CutieTracker
from .errors import PerceptionDependencyError
from .factory import SEGMENTER_BACKENDS, TRACKER_BACKENDS, build_segmenter, build_tracker
from .flow_tracker import FlowTracker
from .grabcut import GrabCutSegmenter
from .masks import mask_iou, mask_to_box
from .sam import SamSegmenter
from .sam2_backend import Sam2Segmenter, Sam2Tracker

__all__ = [
    "Segmenter",
    "MaskTracker",
    "build_segmenter",
    "build_tracker",
    "PerceptionDependencyError",
    "GrabCutSegmenter",
    "SamSegmenter",
    "Sam2Segmenter",
    "Sam2Tracker",
    "FlowTracker",
    "CutieTracker",
    "SEGMENTER_BACKENDS",
    "TRACKER_BACKENDS",
    "mask_iou",
    "mask_to_box",
]
