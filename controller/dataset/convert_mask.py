"""``convert --mask segment``: the target mask of an episode from its head frames, computed offline.

At run time the planner gives the controller a box around the target and the perception stack
turns it into a mask (segmenter on the first frame, tracker on the others). Offline there is no
planner call, so the box comes from

* ``--mask-box x0 y0 x1 y1`` (pixels of the head image, the same box for every episode), or
* the episode's language instruction, read by the offline planner
  (:func:`planner.server.segmentation.analyse_scene` + :func:`planner.server.choice.locate`, the
  classical-vision planner behind ``python -m planner.server``; it understands colour and shape
  words such as ``"grasp the red box"``).

The segmenter and tracker are the weight-free defaults of :mod:`inference_utils.perception`
(``grabcut`` and ``flow``) unless a perception config says otherwise. The mask is written into
channel 3 of ``rgbm`` as 0/255.
"""
from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence

import numpy as np

from controller.dataset.errors import DatasetError

#: Perception back-ends used by default (weight-free, CPU).
DEFAULT_PERCEPTION = {"segmenter": {"backend": "grabcut"}, "tracker": {"backend": "flow"}}


def box_from_language(head_bgr: np.ndarray, language: str) -> tuple[int, int, int, int]:
    """The offline planner's box ``(x0, y0, x1, y1)`` for ``language`` in one head frame.

    Raises :class:`DatasetError` when the planner sees no object at all.
    """
    from planner.server.segmentation import analyse_scene  # noqa: PLC0415 - cv2, only for segment
    from planner.server.choice import locate  # noqa: PLC0415
    from planner.server.vocab import parse_text  # noqa: PLC0415

    scene = analyse_scene(np.ascontiguousarray(head_bgr))
    obj = locate(scene, parse_text(language))
    if obj is None:
        raise DatasetError(f"the offline planner found no object for {language!r} in the first head frame")
    x0, y0, x1, y1 = (int(v) for v in obj.bbox)
    return x0, y0, x1, y1


class EpisodeSegmenter:
    """Masks for whole episodes: box -> segmenter on the first frame -> tracker on the rest.

    Args:
        box: fixed ``(x0, y0, x1, y1)`` for every episode; None: from each episode's language.
        perception: config of :func:`inference_utils.perception.build_segmenter` /
            ``build_tracker`` (default :data:`DEFAULT_PERCEPTION`).
    """

    def __init__(self, box: Optional[Sequence[float]] = None, perception: Optional[Mapping[str, Any]] = None):
        from inference_utils.perception import build_segmenter, build_tracker  # noqa: PLC0415

        if box is not None and len(box) != 4:
            raise DatasetError(f"--mask-box needs 4 numbers x0 y0 x1 y1, got {list(box)}")
        self.box = None if box is None else tuple(float(v) for v in box)
        cfg = dict(DEFAULT_PERCEPTION, **(perception or {}))
        self.segmenter = build_segmenter(cfg)
        self.tracker = build_tracker(cfg)
        self.boxes: list = []   # the box used per episode, in call order (for reports and tests)

    def masks(self, head_bgr: Any, language: Optional[str], where: str = "") -> np.ndarray:
        """(T, H, W) uint8 0/255 target masks of one episode's head frames (T, H, W, 3) BGR.

        ``where`` prefixes errors (e.g. ``"data/x.zarr episode 3"``).
        """
        frames = head_bgr
        first = np.ascontiguousarray(frames[0])
        if self.box is not None:
            box = self.box
        elif language:
            try:
                box = box_from_language(first, language)
            except DatasetError as exc:
                raise DatasetError(f"{where}: {exc}") from exc
        else:
            raise DatasetError(f"{where}: --mask segment needs the episode's language instruction or "
                               f"--mask-box x0 y0 x1 y1; this episode has no language")
        self.boxes.append(tuple(box))
        try:
            mask = np.asarray(self.segmenter.segment(first, box), dtype=bool)
        except ValueError as exc:   # a box outside the image
            raise DatasetError(f"{where}: cannot segment box {list(box)}: {exc}") from exc
        out = np.zeros(np.shape(frames)[:3], dtype=np.uint8)
        out[0] = mask * np.uint8(255)
        self.tracker.reset()
        self.tracker.start(first, mask)
        for t in range(1, len(out)):
            out[t] = np.asarray(self.tracker.track(np.ascontiguousarray(frames[t])), dtype=bool) * np.uint8(255)
        return out

    def apply(self, episode: dict, language: Optional[str], where: str = "") -> dict:
        """Write the masks into channel 3 of ``episode['rgbm']`` (copied if read-only)."""
        rgbm = np.array(episode["rgbm"], copy=True)
        rgbm[..., 3] = self.masks(rgbm[..., :3], language, where)
        episode = dict(episode)
        episode["rgbm"] = rgbm
        return episode
