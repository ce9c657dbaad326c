"""Back-end selection from configuration and the error messages for missing extras."""
from __future__ import annotations

import sys

import pytest

import inference_utils.perception as perception
from inference_utils.perception import (FlowTracker, GrabCutSegmenter, PerceptionDependencyError,
                                        build_segmenter, build_tracker)


def test_public_exports():
    for name in ("Segmenter", "MaskTracker", "build_segmenter", "build_tracker", "PerceptionDependencyError"):
        assert hasattr(perception, name)


def test_defaults_and_options():
    assert isinstance(build_segmenter({}), GrabCutSegmenter)
    assert isinstance(build_tracker(None), FlowTracker)
    cfg = {"segmenter": {"backend": "grabcut", "checkpoint": None, "model_type": "vit_h", "device": "cpu"},
           "tracker": {"backend": "flow", "weights": None, "device": "cpu", "reseg_every": 7}}
    assert isinstance(build_segmenter(cfg), GrabCutSegmenter)
    tr = build_tracker(cfg)
    assert isinstance(tr, FlowTracker) and tr.reseg_every == 7
    assert build_tracker({"backend": "flow", "reseg_every": 3}).reseg_every == 3  # bare section


def test_omegaconf_config():
    omegaconf = pytest.importorskip("omegaconf")
    cfg = omegaconf.OmegaConf.create({"tracker": {"backend": "flow", "reseg_every": 4}})
    assert build_tracker(cfg).reseg_every == 4


def test_unknown_backend_lists_valid_ones():
    with pytest.raises(ValueError, match="grabcut, sam"):
        build_segmenter({"segmenter": {"backend": "mask-rcnn"}})
    with pytest.raises(ValueError, match="flow, cutie"):
        build_tracker({"tracker": {"backend": "xmem"}})


def test_unknown_keys_warn():
    with pytest.warns(UserWarning, match="reseg_evry"):
        build_tracker({"tracker": {"backend": "flow", "reseg_evry": 3}})


def test_sam_missing_package_message(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "segment_anything", None)  # import fails even if installed
    ckpt = tmp_path / "sam_vit_b.pth"
    ckpt.write_bytes(b"x")
    with pytest.raises(PerceptionDependencyError) as err:
        build_segmenter({"segmenter": {"backend": "sam", "checkpoint": str(ckpt), "model_type": "vit_b"}})
    msg = str(err.value)
    assert "pip install -e .[sam]" in msg and "pip install segment-anything" in msg
    assert "not found" not in msg  # the checkpoint exists: only the package is reported


def test_sam_missing_checkpoint_message(tmp_path):
    path = tmp_path / "weights" / "sam_vit_h_4b8939.pth"
    with pytest.raises(PerceptionDependencyError) as err:
        build_segmenter({"segmenter": {"backend": "sam", "checkpoint": str(path)}})
    msg = str(err.value)
    assert str(path) in msg
    assert "https://dl.fbaipublicfiles.com/segment_anything/sam_vit_h_4b8939.pth" in msg
    assert "download it manually" in msg
    with pytest.raises(PerceptionDependencyError, match="segmenter.checkpoint"):
        build_segmenter({"segmenter": {"backend": "sam", "checkpoint": None}})
    with pytest.raises(ValueError, match="vit_h, vit_l, vit_b"):
        build_segmenter({"segmenter": {"backend": "sam", "model_type": "vit_x"}})


def test_cutie_missing_message(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "cutie", None)
    path = tmp_path / "cutie-base-mega.pth"
    with pytest.raises(PerceptionDependencyError) as err:
        build_tracker({"tracker": {"backend": "cutie", "weights": str(path)}})
    msg = str(err.value)
    assert "git clone https://github.com/hkchengrex/Cutie.git" in msg and "pip install -e" in msg
    assert "not on PyPI" in msg
    assert str(path) in msg and "cutie-base-mega.pth" in msg
    assert "releases/download/v1.0/cutie-base-mega.pth" in msg


def test_auto_falls_back_with_warning(monkeypatch):
    monkeypatch.setitem(sys.modules, "segment_anything", None)
    monkeypatch.setitem(sys.modules, "cutie", None)
    with pytest.warns(UserWarning, match="SAM unavailable"):
        assert isinstance(build_segmenter({"segmenter": {"backend": "auto"}}), GrabCutSegmenter)
    with pytest.warns(UserWarning, match="Cutie unavailable"):
        assert isinstance(build_tracker({"tracker": {"backend": "auto"}}), FlowTracker)


def test_sam2_missing_package_message(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "sam2", None)  # import fails even if installed
    ckpt = tmp_path / "sam2.1_hiera_tiny.pt"
    ckpt.write_bytes(b"x")
    for build, section, key in ((build_segmenter, "segmenter", "checkpoint"), (build_tracker, "tracker", "weights")):
        with pytest.raises(PerceptionDependencyError) as err:
            build({section: {"backend": "sam2", key: str(ckpt), "model_type": "sam2.1_hiera_t"}})
        msg = str(err.value)
        assert "SAM2_BUILD_CUDA=0" in msg and "--no-build-isolation" in msg and "sam2==1.1.0" in msg
        assert "not found" not in msg  # the checkpoint exists: only the package is reported


def test_sam2_missing_checkpoint_message(tmp_path):
    path = tmp_path / "weights" / "sam2.1_hiera_large.pt"
    with pytest.raises(PerceptionDependencyError) as err:
        build_segmenter({"segmenter": {"backend": "sam2", "checkpoint": str(path), "model_type": "sam2.1_hiera_l"}})
    msg = str(err.value)
    assert str(path) in msg and "download it manually" in msg
    assert "https://dl.fbaipublicfiles.com/segment_anything_2/092824/sam2.1_hiera_large.pt" in msg
    with pytest.raises(PerceptionDependencyError, match="tracker.weights"):
        build_tracker({"tracker": {"backend": "sam2", "weights": None}})
    with pytest.raises(ValueError, match="sam2.1_hiera_t, sam2.1_hiera_s"):
        build_segmenter({"segmenter": {"backend": "sam2", "model_type": "vit_h"}})
    with pytest.raises(ValueError, match="flow, cutie, sam2"):
        build_tracker({"tracker": {"backend": "xmem"}})


def test_perception_config_files_name_known_backends_and_keys():
    """Every inference_utils/config/perception/*.yaml builds its back-ends with no unknown key."""
    from pathlib import Path

    from omegaconf import OmegaConf

    from inference_utils.perception import factory

    files = sorted((Path(factory.__file__).resolve().parents[1] / "config" / "perception").glob("*.yaml"))
    assert {f.stem for f in files} >= {"classic", "learned", "sam2"}
    for f in files:
        cfg = OmegaConf.to_container(OmegaConf.load(f))
        for name, valid, table in (("segmenter", factory.SEGMENTER_BACKENDS, factory._SEG_OPTS),
                                   ("tracker", factory.TRACKER_BACKENDS, factory._TRK_OPTS)):
            sec = cfg[name]
            assert sec["backend"] in valid, f.name
            if sec["backend"] in table:
                known = set().union(*table.values()) | {"backend"}
                assert set(sec) <= known, (f.name, set(sec) - known)
