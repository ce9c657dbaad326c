"""Loading weights holds the model plus one tensor of the file, never a second copy of the model:
the tensors are read one at a time, copied into the parameters that already exist (same storage),
and dropped before the next is read. Mechanics only (no memory or time measurement)."""
from __future__ import annotations

import weakref

import pytest
import torch

from controller.model.diffusion.ema_model import EMAModel
from controller.workspace import checkpoint as ckpt_lib


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A tiny checkpoint with EMA weights that differ from the raw ones."""
    from tests.controller.conftest import build_policy, fitted_normalizer
    policy, cfg = build_policy("tiny")
    policy.set_normalizer(fitted_normalizer())
    ema = EMAModel(policy)
    for s in ema.shadow.values():  # EMA weights unlike the raw ones
        s.add_(1.0)
    path = ckpt_lib.save_checkpoint(str(tmp_path_factory.mktemp("ck") / "latest"), policy, cfg=cfg, ema=ema)
    return path, policy, ema


def _fresh():
    from tests.controller.conftest import build_policy
    torch.manual_seed(123)
    return build_policy("tiny")[0]


@pytest.mark.parametrize("use_ema", [False, True])
def test_loading_reads_one_tensor_at_a_time_into_the_existing_parameters(saved, monkeypatch, use_ema):
    path, source, ema = saved
    policy = _fresh()
    storage = {k: v.untyped_storage().data_ptr() for k, v in policy.state_dict().items()
               if not k.startswith("normalizer.")}
    alive, reads = [], {}
    real_get = ckpt_lib._TensorFile.get

    def get(self, name):  # tensors are freed by reference counting as soon as they are dropped
        if not name.startswith("normalizer."):
            held = [r for r in alive if r() is not None]
            assert not held, f"{len(held)} earlier tensor(s) of the file still alive when reading {name}"
        t = real_get(self, name)
        if not name.startswith("normalizer."):
            alive.append(weakref.ref(t))
        reads.setdefault(name, []).append(self.path)
        return t

    def no_whole_file(*a, **k):
        raise AssertionError("load_policy_weights read a whole file at once")

    monkeypatch.setattr(ckpt_lib._TensorFile, "get", get)
    monkeypatch.setattr(ckpt_lib, "load_file", no_whole_file)
    ckpt_lib.load_policy_weights(policy, path, use_ema=use_ema)
    after = {k: v.untyped_storage().data_ptr() for k, v in policy.state_dict().items() if k in storage}
    assert after == storage  # copied into place: no parameter was replaced by a file tensor
    assert all(len(v) == 1 for v in reads.values())  # every tensor read once ...
    shadow = ema.state_dict()["shadow"]
    for k, v in policy.state_dict().items():  # ... from the EMA file when it has it (and asked)
        want = shadow[k] if use_ema and k in shadow else source.state_dict()[k]
        assert torch.equal(v, want), k
        assert reads[k][0].endswith(ckpt_lib.EMA_FILE if use_ema and k in shadow else ckpt_lib.MODEL_FILE)
