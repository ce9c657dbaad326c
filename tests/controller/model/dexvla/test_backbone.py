"""DexVLABackbone on a tiny random Qwen2-VL built offline: encoding, greedy generation with the KV
cache, teacher forcing (same hidden states as generation), frozen vision, local-folder loading."""
import os

import pytest
import torch

from controller.model.dexvla import ANSWER_SUFFIX, DexVLABackbone
from planner.backends.tiny_model import ScriptedReply

INSTR = ["grasp the red box", "grasp"]


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models: one intra-op thread is faster, and much faster on a shared, loaded CPU."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def backbone():
    return DexVLABackbone(preset="tiny", max_reasoning_tokens=6).eval()


def _images(B=2, V=2, size=56, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(B, V, 3, size, size, generator=g)                       # (B, V, 3, H, W)


def test_encode_shapes_and_left_padding(backbone):
    out = backbone.encode(_images(), INSTR)
    h, m = out["prompt_hidden"], out["prompt_mask"]
    assert h.shape[:2] == m.shape and h.shape[2] == backbone.hidden_size == 64
    assert m.dtype == torch.bool and m[:, -1].all()
    assert m[0].sum() > m[1].sum() and not m[1, 0]                             # shorter prompt: padded left
    u8 = backbone.encode((_images() * 255).round().to(torch.uint8), INSTR)     # uint8 input accepted
    torch.testing.assert_close(u8["prompt_hidden"], h)


def test_generate_respects_the_token_limit(backbone):
    out = backbone.generate_reasoning(_images(), INSTR, max_new_tokens=4)
    assert len(out["text"]) == 2 and all(isinstance(t, str) for t in out["text"])
    assert out["token_ids"].shape[1] <= 4
    G = out["token_ids"].shape[1]
    assert out["reasoning_hidden"].shape == (2, G - 1, 64) and out["reasoning_mask"].shape == (2, G - 1)
    again = backbone.generate_reasoning(_images(), INSTR, max_new_tokens=4)   # greedy: deterministic
    assert torch.equal(again["token_ids"], out["token_ids"]) and again["text"] == out["text"]


def test_generation_and_teacher_forcing_give_the_same_hidden_states(backbone):
    """Scripted reply 'approach' + suffix + eos: text, reasoning and prompt states match lm_forward."""
    script = ScriptedReply.for_texts(backbone.tokenizer, "approach" + ANSWER_SUFFIX)
    gen = backbone.generate_reasoning(_images(), INSTR, max_new_tokens=40, logits_processor=[script])
    assert gen["text"] == ["approach", "approach"]
    tf = backbone.lm_forward(_images(), INSTR, ["approach", "approach"])
    n = len(backbone.tokenizer.encode("approach" + ANSWER_SUFFIX, add_special_tokens=False))
    assert gen["reasoning_mask"].sum(1).tolist() == [n, n] == tf["reasoning_mask"].sum(1).tolist()
    torch.testing.assert_close(gen["prompt_hidden"][gen["prompt_mask"]], tf["prompt_hidden"][tf["prompt_mask"]],
                               atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(gen["reasoning_hidden"][gen["reasoning_mask"]],
                               tf["reasoning_hidden"][tf["reasoning_mask"]], atol=1e-4, rtol=1e-4)


def test_lm_loss_only_on_answer_tokens(backbone):
    out = backbone.lm_forward(_images(), INSTR, ["approach", "lift the box up"])
    assert torch.isfinite(out["lm_loss"]) and out["lm_loss"].dim() == 0
    lengths = [len(backbone.tokenizer.encode(r + ANSWER_SUFFIX, add_special_tokens=False)) + 1
               for r in ("approach", "lift the box up")]
    assert out["reasoning_hidden"].shape[1] == max(lengths)
    assert out["reasoning_mask"].sum(1).tolist() == [n - 1 for n in lengths]   # final eos excluded


def test_vision_tower_freezable():
    bb = DexVLABackbone(preset="tiny", freeze_vision=True)
    assert not any(p.requires_grad for p in bb.model.model.visual.parameters())
    assert all(p.requires_grad for p in bb.model.model.language_model.parameters())
    bb.set_vision_trainable(True)
    assert all(p.requires_grad for p in bb.model.model.visual.parameters())


def test_loads_from_a_saved_local_folder_offline(backbone, tmp_path, monkeypatch):
    folder = backbone.save_pretrained(tmp_path / "tiny-qwen2vl")
    names = set(os.listdir(folder))
    assert {"config.json", "model.safetensors", "tokenizer.json", "chat_template.jinja"} <= names
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    loaded = DexVLABackbone(model_path=str(folder), max_reasoning_tokens=6).eval()
    a, b = backbone.encode(_images(), INSTR), loaded.encode(_images(), INSTR)
    assert torch.equal(a["prompt_mask"], b["prompt_mask"])
    torch.testing.assert_close(a["prompt_hidden"], b["prompt_hidden"])
    ga = backbone.generate_reasoning(_images(), INSTR)
    gb = loaded.generate_reasoning(_images(), INSTR)
    assert ga["text"] == gb["text"]


def test_missing_folder_is_refused(tmp_path):
    with pytest.raises(FileNotFoundError):
        DexVLABackbone(model_path=str(tmp_path / "nope"))
