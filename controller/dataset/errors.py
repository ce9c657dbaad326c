"""Error type and naming constants shared by the zarr data layer.

Every problem found in a dataset is raised as :class:`DatasetError` (:class:`ChunkError` for a
missing, truncated or undecodable chunk) with a message that names the store path, the key inside
it, and what was expected, e.g.::

    data/sim.zarr: key 'data/rgbm' has shape (100, 480, 640, 3); expected (K, H, W, 4)
"""
from __future__ import annotations


class DatasetError(ValueError):
    """A zarr dataset is missing, malformed or inconsistent with the data contract."""


#: Image keys and their channel count (BGR wrist camera; BGR head camera + target mask).
IMAGE_CHANNELS: dict[str, int] = {"right_cam_img": 3, "rgbm": 4}
#: Low-dimensional keys (loaded into memory) and their default width.
LOW_DIM_DIMS: dict[str, int] = {"right_state": 13, "action": 13}
#: The keys a training sample needs, in the order they are validated.
DEFAULT_KEYS: tuple[str, ...] = ("right_cam_img", "rgbm", "right_state", "action")
#: Group holding the per-step arrays and the one holding the episode boundaries.
DATA_GROUP = "data"
META_GROUP = "meta"
EPISODE_ENDS_KEY = "meta/episode_ends"


class ChunkError(DatasetError):
    """One chunk of a zarr array is missing, truncated or undecodable.

    Attributes:
        array: the array's key inside the store, e.g. ``'data/rgbm'``.
        chunk: the chunk's grid coordinates joined by dots, e.g. ``'3.0.0.0'``.
        file: where the chunk's bytes live (a file path, or ``'<store>.zip::<key>'``).
        kind: short name of the problem: ``'missing'``, ``'empty'``, ``'truncated'``,
            ``'too large'``, ``'bad header'``, ``'trailing bytes'`` or ``'undecodable'``.
    """

    def __init__(self, message: str, array: str = "", chunk: str = "", file: str = "", kind: str = ""):
        super().__init__(message)
        self.array, self.chunk, self.file, self.kind = array, chunk, file, kind
