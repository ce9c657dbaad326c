"""The mask ViT's transformer equals PyTorch's pre-norm ``nn.TransformerEncoder`` (which it
replaced): same state-dict keys, same initial weights for the same seed, same outputs in training
and in inference (where PyTorch takes its fast path), fused and explicit attention."""
import pytest
import torch
import torch.nn as nn

from controller.model.diffusion.layers import set_fused_attention
from controller.model.vision.mask_transformer import MaskTransformer


def make_pair(seed: int, d: int = 48, heads: int = 4, layers: int = 3):
    """(ours, PyTorch's) built from the same seed."""
    torch.manual_seed(seed)
    ours = MaskTransformer(d, heads, 4 * d, layers)
    torch.manual_seed(seed)
    ref = nn.TransformerEncoder(
        nn.TransformerEncoderLayer(d_model=d, nhead=heads, dim_feedforward=4 * d, dropout=0.0,
                                   activation=nn.GELU(), batch_first=True, norm_first=True),
        num_layers=layers, enable_nested_tensor=False)
    return ours, ref


def test_same_keys_and_initial_weights():
    ours, ref = make_pair(3)
    a, b = ours.state_dict(), ref.state_dict()
    assert list(a) == list(b)
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("fused", [True, False])
def test_outputs_match_pytorch_encoder(seed, fused):
    ours, ref = make_pair(seed)
    g = torch.Generator().manual_seed(seed + 10)
    for p in ref.parameters():  # leave the initial point: random weights everywhere
        p.data.add_(0.05 * torch.randn(p.shape, generator=g))
    ours.load_state_dict(ref.state_dict())
    assert set_fused_attention(ours, fused) == 3
    x = torch.randn(2, 37, 48, generator=g)
    # training mode, autograd on: PyTorch's regular path
    ours.train(), ref.train()
    y, y_ref = ours(x), ref(x)
    torch.testing.assert_close(y, y_ref, atol=2e-5, rtol=1e-5)
    y.square().sum().backward()
    assert ours.layers[0].self_attn.in_proj_weight.grad is not None
    # eval + inference mode: PyTorch's fast path
    ours.eval(), ref.eval()
    with torch.inference_mode():
        torch.testing.assert_close(ours(x), ref(x), atol=2e-5, rtol=1e-5)


def test_head_count_must_divide_width():
    with pytest.raises(ValueError, match="not divisible"):
        MaskTransformer(50, 4, 200, 1)
