"""Controller data layer: zarr replay buffer, episode writer, window sampler and torch dataset.

Public API::

    from controller.dataset import (DatasetError, ZarrReplayBuffer, ZarrEpisodeWriter,
                                    SequenceSampler, get_val_mask, downsample_mask, GraspDataset)
    from controller.dataset.image_ops import bgr_uint8_to_float_chw, rgbm_uint8_to_float_chw

Other on-disk formats (ACT/DexVLA HDF5 ``act_h5``, LeRobot v3.0 ``lerobot``, our ``deployment``
recordings) are read through the same interface by :mod:`controller.dataset.formats`
(``open_source(path)``); :class:`GraspDataset` opens every path that way, so formats may be mixed.

CLI: ``python -m controller.dataset.inspect PATH [PATH ...]``.
"""
from controller.dataset.errors import DatasetError
from controller.dataset.replay_buffer import LazyZarrArray, ZarrReplayBuffer
from controller.dataset.sampler import SequenceSampler, downsample_mask, get_val_mask
from controller.dataset.writer import ZarrEpisodeWriter, write_episodes


def __getattr__(name):  # lazy: importing the dataset pulls in torch and the normaliser
    if name == "GraspDataset":
        from controller.dataset.grasp_dataset import GraspDataset
        return GraspDataset
    raise AttributeError(name)


__all__ = ["DatasetError", "LazyZarrArray", "ZarrReplayBuffer", "SequenceSampler", "downsample_mask",
           "get_val_mask", "ZarrEpisodeWriter", "write_episodes", "GraspDataset"]
