"""A damaged checkpoint gives a CheckpointError naming the file (and the tensor, where one is to
blame), from every loader: weights, EMA weights, training state, meta, normaliser, export."""
from __future__ import annotations

import json
import os
import random
import re
import shutil

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from controller.export_checkpoint import export_checkpoint
from controller.model.diffusion.ema_model import EMAModel
from controller.workspace.checkpoint import (EMA_FILE, META_FILE, MODEL_FILE, NORMALIZER_FILE, STATE_FILE,
                                             CheckpointError, capture_rng_state, check_safetensors_file,
                                             load_policy_weights, load_training_state, read_meta, read_normalizer,
                                             read_safetensors, save_checkpoint)


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    """A complete tiny training checkpoint (raw + EMA weights, training state, config)."""
    from tests.controller.conftest import build_policy, fitted_normalizer

    policy, cfg = build_policy("tiny")
    policy.set_normalizer(fitted_normalizer())
    ema = EMAModel(policy)
    state = {"epoch": 0, "global_step": 1, "optimizer": {"state": {}, "param_groups": []}, "lr_scheduler": {},
             "ema": ema.state_dict(), "rng": [capture_rng_state()]}
    path = str(tmp_path_factory.mktemp("pristine") / "latest")
    return save_checkpoint(path, policy, cfg=cfg, ema=ema, training_state=state, meta={"epoch": 0})


@pytest.fixture
def ckpt(pristine, tmp_path):
    """A fresh copy of the pristine checkpoint, to damage."""
    return shutil.copytree(pristine, str(tmp_path / "ckpt"))


@pytest.fixture(scope="module")
def policy():
    from tests.controller.conftest import build_policy
    return build_policy("tiny")[0]


def _header(path):
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        return n, json.loads(f.read(n))


def _first_cut_tensor(path, new_size):
    """The first tensor (in data order) whose bytes a truncation to ``new_size`` removes."""
    n, header = _header(path)
    data_len = new_size - 8 - n
    spans = sorted((v["data_offsets"], k) for k, v in header.items() if k != "__metadata__")
    return next(k for (begin, end), k in spans if end > data_len)


def _truncate(path, size):
    with open(path, "r+b") as f:
        f.truncate(size)


def _rewrite_header(path, header):
    """Replace a safetensors file's header, keeping its data section."""
    n, _ = _header(path)
    with open(path, "rb") as f:
        data = f.read()[8 + n:]
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as f:
        f.write(len(raw).to_bytes(8, "little") + raw + data)


def _raises(fn, *names):
    """``fn()`` must raise CheckpointError whose message names every one of ``names``."""
    with pytest.raises(CheckpointError) as info:
        fn()
    for name in names:
        assert name in str(info.value), (name, str(info.value))
    return str(info.value)


def test_pristine_checkpoint_loads(ckpt, policy):
    assert load_policy_weights(policy, ckpt, use_ema=True)["path"].endswith(MODEL_FILE)
    assert load_training_state(ckpt)["global_step"] == 1
    assert read_meta(ckpt)["epoch"] == 0 and read_normalizer(ckpt)
    assert set(check_safetensors_file(os.path.join(ckpt, MODEL_FILE))) == set(read_safetensors(
        os.path.join(ckpt, MODEL_FILE)))


@pytest.mark.parametrize("fraction", [0.3, 0.6, 0.999])
def test_truncated_model_names_file_and_first_cut_tensor(ckpt, policy, fraction):
    path = os.path.join(ckpt, MODEL_FILE)
    n, _ = _header(path)
    size = os.path.getsize(path)
    new_size = 8 + n + int((size - 8 - n) * fraction)
    tensor = _first_cut_tensor(path, new_size)
    _truncate(path, new_size)
    msg = _raises(lambda: load_policy_weights(policy, ckpt), MODEL_FILE, f"'{tensor}'")
    assert "truncated" in msg


def test_model_cut_inside_its_header_or_length(ckpt, policy):
    path = os.path.join(ckpt, MODEL_FILE)
    n, _ = _header(path)
    _truncate(path, 8 + n // 2)
    _raises(lambda: load_policy_weights(policy, ckpt), MODEL_FILE, "header")
    _truncate(path, 5)
    _raises(lambda: load_policy_weights(policy, ckpt), MODEL_FILE, "truncated")
    _truncate(path, 0)
    _raises(lambda: load_policy_weights(policy, ckpt), MODEL_FILE)


def test_garbage_bytes(ckpt, policy):
    path = os.path.join(ckpt, MODEL_FILE)
    size = os.path.getsize(path)
    rng = random.Random(0)
    with open(path, "wb") as f:
        f.write(rng.randbytes(size))
    _raises(lambda: load_policy_weights(policy, ckpt), MODEL_FILE)
    with open(path, "wb") as f:  # a plausible length, then garbage instead of JSON
        f.write((64).to_bytes(8, "little") + rng.randbytes(size - 8))
    _raises(lambda: load_policy_weights(policy, ckpt), MODEL_FILE, "not valid JSON")
    with open(path, "wb") as f:  # valid JSON, but not an object
        f.write((8).to_bytes(8, "little") + b"[1, 2] " + b" ")
    _raises(lambda: load_policy_weights(policy, ckpt), MODEL_FILE, "not a JSON object")


def test_header_claims_a_tensor_that_is_not_there(ckpt, policy):
    path = os.path.join(ckpt, MODEL_FILE)
    n, header = _header(path)
    data_len = os.path.getsize(path) - 8 - n
    header["ghost.weight"] = {"dtype": "F32", "shape": [4], "data_offsets": [data_len, data_len + 16]}
    _rewrite_header(path, header)
    _raises(lambda: load_policy_weights(policy, ckpt), MODEL_FILE, "'ghost.weight'", "not in the file")


def test_header_entry_that_does_not_fit_its_shape_or_is_malformed(ckpt, policy):
    path = os.path.join(ckpt, MODEL_FILE)
    _, header = _header(path)
    name = next(k for k in header if k != "__metadata__")
    good = dict(header[name])
    header[name] = dict(good, shape=[s + 1 for s in good["shape"]] or [2])
    _rewrite_header(path, header)
    _raises(lambda: load_policy_weights(policy, ckpt), MODEL_FILE, f"'{name}'", "should take")
    header[name] = dict(good, data_offsets="0-4")
    _rewrite_header(path, header)
    _raises(lambda: load_policy_weights(policy, ckpt), MODEL_FILE, f"'{name}'", "data_offsets")


def test_every_truncation_and_header_byte_flip_is_a_checkpoint_error(ckpt, policy):
    """Never a raw SafetensorError/KeyError/OSError, wherever the file is cut or a header byte flips."""
    path = os.path.join(ckpt, MODEL_FILE)
    with open(path, "rb") as f:
        blob = f.read()
    n = int.from_bytes(blob[:8], "little")
    for size in sorted({0, 1, 7, 8, 9, 8 + n - 1, 8 + n, 8 + n + 1, *range(0, len(blob), max(1, len(blob) // 40))}):
        with open(path, "wb") as f:
            f.write(blob[:size])
        _raises(lambda: load_policy_weights(policy, ckpt), MODEL_FILE)
    rng = random.Random(1)
    for _ in range(60):
        i = rng.randrange(0, 8 + n)
        damaged = bytearray(blob)
        damaged[i] ^= 1 << rng.randrange(8)
        with open(path, "wb") as f:
            f.write(bytes(damaged))
        try:
            load_policy_weights(policy, ckpt)
        except CheckpointError as exc:
            assert MODEL_FILE in str(exc)


def _metadata(path):
    with safe_open(path, framework="pt") as f:
        return f.metadata()


def test_ema_missing_a_tensor(ckpt, policy, tmp_path):
    path = os.path.join(ckpt, EMA_FILE)
    ema, metadata = load_file(path), _metadata(path)
    assert metadata["tensor_count"] == str(len(ema))
    dropped = sorted(ema)[len(ema) // 2]
    del ema[dropped]
    save_file(ema, path, metadata=metadata)  # the header no longer lists it
    load_policy_weights(policy, ckpt)  # raw weights do not need the EMA file
    msg = _raises(lambda: load_policy_weights(policy, ckpt, use_ema=True), EMA_FILE, dropped, "incomplete")
    assert f"holds {len(ema)} tensors but was saved with {len(ema) + 1}" in msg
    _raises(lambda: export_checkpoint(ckpt, str(tmp_path / "out")), EMA_FILE, "incomplete")
    # a file without the recorded count (older checkpoints) cannot tell a lost tensor from one it
    # never had (e.g. a backbone unfrozen for fine-tuning): those load, the parameter keeps raw weights
    save_file(ema, path, metadata={"format": metadata["format"]})
    load_policy_weights(policy, ckpt, use_ema=True)


def test_model_missing_a_tensor(ckpt, policy):
    path = os.path.join(ckpt, MODEL_FILE)
    sd, metadata = load_file(path), _metadata(path)
    dropped = sorted(sd)[0]
    del sd[dropped]
    save_file(sd, path, metadata=metadata)
    _raises(lambda: load_policy_weights(policy, ckpt), MODEL_FILE, "incomplete")
    save_file(sd, path, metadata={"format": metadata["format"]})
    _raises(lambda: load_policy_weights(policy, ckpt), MODEL_FILE, f"missing keys: {dropped}")


def test_ema_truncated_unknown_tensor_or_wrong_shape(ckpt, policy):
    path = os.path.join(ckpt, EMA_FILE)
    ema = load_file(path)
    name = sorted(ema)[0]
    save_file({**ema, "not.in.model": torch.zeros(2)}, path)
    _raises(lambda: load_policy_weights(policy, ckpt, use_ema=True), EMA_FILE, "not.in.model")
    save_file({**ema, name: torch.zeros(3, 3, 3)}, path)
    _raises(lambda: load_policy_weights(policy, ckpt, use_ema=True), EMA_FILE, name, "shape")
    save_file(ema, path)
    size = os.path.getsize(path)
    tensor = _first_cut_tensor(path, size - 3)
    _truncate(path, size - 3)
    _raises(lambda: load_policy_weights(policy, ckpt, use_ema=True), EMA_FILE, f"'{tensor}'")


def test_ema_file_gone_although_meta_says_it_exists(ckpt, policy):
    os.unlink(os.path.join(ckpt, EMA_FILE))
    _raises(lambda: load_policy_weights(policy, ckpt, use_ema=True), EMA_FILE, META_FILE)
    with open(os.path.join(ckpt, META_FILE), "w") as f:
        f.write('{"has_ema": tru')
    _raises(lambda: load_policy_weights(policy, ckpt, use_ema=True), META_FILE)


def test_normaliser_tensor_missing_from_model(ckpt, policy):
    path = os.path.join(ckpt, MODEL_FILE)
    sd = load_file(path)
    scale = next(k for k in sd if k.startswith("normalizer.") and k.endswith(".scale"))
    del sd[scale]
    save_file(sd, path)
    _raises(lambda: load_policy_weights(policy, ckpt), MODEL_FILE, "normali")


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty", "not_a_dict", "lacks_keys"])
def test_damaged_training_state(ckpt, damage):
    path = os.path.join(ckpt, STATE_FILE)
    if damage == "truncated":
        _truncate(path, os.path.getsize(path) // 2)
    elif damage == "garbage":
        with open(path, "wb") as f:
            f.write(random.Random(2).randbytes(4096))
    elif damage == "empty":
        _truncate(path, 0)
    elif damage == "not_a_dict":
        torch.save([1, 2, 3], path)
    else:
        torch.save({"epoch": 0, "global_step": 1}, path)
    msg = _raises(lambda: load_training_state(ckpt), STATE_FILE)
    if damage == "lacks_keys":
        assert "optimizer" in msg and "rng" in msg
        assert load_training_state(ckpt, required=("epoch",))["epoch"] == 0


@pytest.mark.parametrize("content", ['{"epoch": 0,', "\xff\xfe", "[1, 2]", ""])
def test_malformed_meta(ckpt, content):
    with open(os.path.join(ckpt, META_FILE), "w", encoding="latin-1") as f:
        f.write(content)
    _raises(lambda: read_meta(ckpt), META_FILE)


@pytest.mark.parametrize("content,key", [('{"params_dict.action.scale": [1, ', None), ("[]", None),
                                         ('{"params_dict.action.scale": ["a"]}', "params_dict.action.scale")])
def test_malformed_normalizer(ckpt, content, key):
    with open(os.path.join(ckpt, NORMALIZER_FILE), "w") as f:
        f.write(content)
    msg = _raises(lambda: read_normalizer(ckpt), NORMALIZER_FILE)
    if key:
        assert key in msg
    os.unlink(os.path.join(ckpt, NORMALIZER_FILE))
    _raises(lambda: read_normalizer(ckpt), NORMALIZER_FILE, "missing")


def test_export_of_a_damaged_checkpoint(ckpt, tmp_path):
    ema_path = os.path.join(ckpt, EMA_FILE)
    size = os.path.getsize(ema_path)
    tensor = _first_cut_tensor(ema_path, size - 1)
    _truncate(ema_path, size - 1)
    _raises(lambda: export_checkpoint(ckpt, str(tmp_path / "out")), EMA_FILE, f"'{tensor}'")
    model_path = os.path.join(ckpt, MODEL_FILE)
    with open(model_path, "r+b") as f:
        f.write(b"\xff" * 16)
    _raises(lambda: export_checkpoint(ckpt, str(tmp_path / "out"), use_ema=False), MODEL_FILE)
    assert not os.path.exists(tmp_path / "out")
    assert not [n for n in os.listdir(tmp_path) if re.search(r"\.(tmp|old)-", n)]


@pytest.mark.parametrize("cut", ["header", "data"])
def test_load_policy_names_the_damaged_file(ckpt, cut):
    """The deployment loader (``load_policy``) checks the header before listing keys."""
    from controller.policy.loading import load_policy

    path = os.path.join(ckpt, MODEL_FILE)
    n, _ = _header(path)
    size = 8 + n // 2 if cut == "header" else os.path.getsize(path) - 100
    with open(path, "r+b") as f:
        f.truncate(size)
    with pytest.raises(CheckpointError, match=re.escape(MODEL_FILE)):
        load_policy(ckpt)
