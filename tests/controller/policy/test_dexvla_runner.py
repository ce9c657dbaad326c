"""DexVLAChunkPolicy (issue 23): raw observation + instruction -> chunk + reasoning; the mask never
reaches the policy; several samples averaged; checkpoint detection; refusals."""
import numpy as np
import pytest
import torch

from tests.controller.conftest import build_policy, fitted_normalizer


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _raw(seed=0, mask_value=0):
    rng = np.random.default_rng(seed)
    rgbm = rng.integers(0, 256, (120, 160, 4), dtype=np.uint8)
    rgbm[..., 3] = mask_value
    return {"right_cam_img": rng.integers(0, 256, (120, 160, 3), dtype=np.uint8), "rgbm": rgbm,
            "right_state": rng.uniform(-0.5, 0.5, 13).astype(np.float32)}


def test_chunk_reasoning_no_mask_and_samples(tmp_path):
    from controller.policy.dexvla_runner import DexVLAChunkPolicy, is_dexvla_checkpoint
    from tests.controller.dexvla_helpers import make_tiny_dexvla_checkpoint

    ckpt = make_tiny_dexvla_checkpoint(tmp_path)
    assert is_dexvla_checkpoint(ckpt) and not is_dexvla_checkpoint(str(tmp_path / "missing"))
    runner = DexVLAChunkPolicy.from_checkpoint(ckpt)
    assert runner.accepts_language and not runner.supports_attention
    noise = torch.randn(64, 13, generator=torch.Generator().manual_seed(0))
    chunk, reasoning = runner.predict_with_reasoning(_raw(mask_value=0), "grasp the red box", noise=noise)
    assert chunk.shape == (64, 13) and chunk.dtype == np.float32 and reasoning == runner.last_reasoning != ""
    masked, _ = runner.predict_with_reasoning(_raw(mask_value=255), "grasp the red box", noise=noise)
    np.testing.assert_array_equal(chunk, masked)                   # the mask channel is never used
    runner.set_instruction("grasp the red box")
    np.testing.assert_array_equal(runner.predict_chunk(_raw(), noise=noise), chunk)
    two = DexVLAChunkPolicy(runner.policy, num_samples=2)
    same = two.predict_chunk(_raw(), noise=torch.stack([noise, noise]), language="grasp the red box")
    np.testing.assert_allclose(same, chunk, atol=1e-5)              # mean of two equal samples
    with pytest.raises(ValueError, match="compile"):
        DexVLAChunkPolicy(runner.policy, compile=True)
    with pytest.raises(ValueError, match="attention"):
        runner.predict_chunk(_raw(), return_attention=True)


def test_refuses_a_dexgraspvla_policy():
    from controller.policy.dexvla_runner import DexVLAChunkPolicy

    policy, _ = build_policy("tiny")
    policy.set_normalizer(fitted_normalizer())
    with pytest.raises(ValueError, match="needs a DexVLAPolicy"):
        DexVLAChunkPolicy(policy)
