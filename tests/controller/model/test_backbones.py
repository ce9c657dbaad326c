"""DINOv2 backbones: local weights in official and timm layouts, clear errors, no network."""
import pytest
import torch

from controller.model.vision.backbones import BackboneWeightsError, build_dino_backbone, patch_tokens

TINY = dict(depth=1, embed_dim=32, num_heads=2)


def _official_layout(sd):
    """timm ViT-S/B/L DINOv2 keys are the official ones minus ``mask_token``: add it back."""
    out = dict(sd)
    out["mask_token"] = torch.zeros(1, sd["cls_token"].shape[-1])
    return out


@pytest.mark.parametrize("layout", ["official", "timm"])
def test_local_weights_round_trip(tmp_path, layout):
    torch.manual_seed(0)
    src = build_dino_backbone("dinov2_vits14", 28, **TINY)
    sd = src.state_dict()
    path = tmp_path / "w.pth"
    torch.save(_official_layout(sd) if layout == "official" else sd, path)
    dst = build_dino_backbone("dinov2_vits14", 28, local_weights_path=str(path), **TINY)
    x = torch.rand(2, 3, 28, 28)
    assert torch.equal(patch_tokens(src, x), patch_tokens(dst, x))
    assert patch_tokens(dst, x).shape == (2, 4, 32)


def test_weights_resampled_to_other_image_size(tmp_path):
    src = build_dino_backbone("dinov2_vits14", 28, **TINY)
    path = tmp_path / "w.pth"
    torch.save(_official_layout(src.state_dict()), path)
    dst = build_dino_backbone("dinov2_vits14", 42, local_weights_path=str(path), **TINY)
    assert dst.grid == (3, 3)
    assert patch_tokens(dst, torch.rand(1, 3, 42, 42)).shape == (1, 9, 32)


def test_mismatched_weights_list_keys(tmp_path):
    src = build_dino_backbone("dinov2_vits14", 28, depth=2, embed_dim=32, num_heads=2)
    path = tmp_path / "w.pth"
    torch.save(src.state_dict(), path)
    with pytest.raises(BackboneWeightsError) as err:
        build_dino_backbone("dinov2_vits14", 28, local_weights_path=str(path), **TINY)
    assert "unexpected keys" in str(err.value) and "blocks.1." in str(err.value)


def test_missing_file_and_bad_size():
    with pytest.raises(BackboneWeightsError, match="not found"):
        build_dino_backbone("dinov2_vits14", 28, local_weights_path="/nonexistent/dinov2.pth", **TINY)
    with pytest.raises(ValueError, match="divisible"):
        build_dino_backbone("dinov2_vits14", 30, **TINY)
    with pytest.raises(ValueError, match="unknown backbone"):
        build_dino_backbone("resnet50", 28)


def test_pickled_objects_are_refused(tmp_path):
    """A weights file that needs unpickling of arbitrary objects is rejected (weights_only)."""
    import argparse
    path = tmp_path / "evil.pth"
    torch.save({"x": argparse.Namespace(a=1)}, path)  # any non-tensor object needs full unpickling
    with pytest.raises(BackboneWeightsError, match="weights_only"):
        build_dino_backbone("dinov2_vits14", 28, local_weights_path=str(path), **TINY)


def test_batch_color_jitter_per_sample_and_ranges():
    from controller.model.vision.color_jitter import BatchColorJitter

    torch.manual_seed(0)
    x = torch.rand(1, 3, 8, 8).repeat(6, 1, 1, 1)
    y = BatchColorJitter(0.3, 0.3, 0.3, 0.1)(x)
    assert y.shape == x.shape and y.min() >= 0 and y.max() <= 1
    assert len({round(v, 5) for v in y.mean((1, 2, 3)).tolist()}) == 6  # independent factors per sample
    grey = torch.full((2, 3, 4, 4), 0.5)
    assert torch.allclose(BatchColorJitter(hue=0.5)(grey), grey, atol=1e-5)  # hue leaves grey alone
    assert torch.equal(BatchColorJitter()(x), x)
    with pytest.raises(ValueError, match="hue"):
        BatchColorJitter(hue=0.7)
