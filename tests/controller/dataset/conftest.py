"""Fixtures for the data-layer tests: synthetic stores in the reference layout."""
from __future__ import annotations

import pytest

from controller.common.shape_meta import make_shape_meta
from tests.controller.dataset.factories import DEFAULT_LENGTHS as LENGTHS, make_grasp_zarr


@pytest.fixture
def make_zarr(tmp_path):
    """Factory: ``make_zarr(name="x.zarr", **make_grasp_zarr kwargs) -> path`` under tmp_path."""
    def _make(name: str = "grasp.zarr", **kwargs):
        return make_grasp_zarr(tmp_path / name, **kwargs)
    return _make


@pytest.fixture(scope="session")
def grasp_zarr(tmp_path_factory):
    """A shared read-only v2 store: 4 episodes of LENGTHS steps at 48x64."""
    return make_grasp_zarr(tmp_path_factory.mktemp("zarr") / "grasp_v2.zarr", episode_lengths=LENGTHS)


@pytest.fixture(scope="session")
def grasp_zarr_v3(tmp_path_factory):
    """The same data written as a zarr v3 store."""
    return make_grasp_zarr(tmp_path_factory.mktemp("zarr") / "grasp_v3.zarr", episode_lengths=LENGTHS,
                           zarr_format=3)


@pytest.fixture
def shape_meta():
    """Model inputs at 32x40 (smaller than the 48x64 stores: exercises the resize)."""
    return make_shape_meta(image_size=(32, 40))
