"""A tiny, randomly initialised Qwen2-VL / Qwen2.5-VL folder, built offline in about a second.

It has the real architecture, tokenizer layout (Qwen's special tokens around a byte-level BPE
vocabulary, so any text can be encoded), image processor and chat template, and loads with
``from_pretrained(folder, local_files_only=True)`` like a downloaded checkpoint. Its replies are
noise: use it to exercise plumbing (the local planner backend, anything else that loads a
Qwen2-VL from a folder), never for answers.

    python -m planner.backends.tiny_model /tmp/tiny-qwen2vl          # then
    python inference.py planner=transformers planner.model_path=/tmp/tiny-qwen2vl ...

``ScriptedReply`` is a logits processor that makes ``generate`` write given texts, to test the
parse paths end to end through ``generate`` and the tokenizer's decoding.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Sequence, Union

import torch
import transformers
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

SPECIAL_TOKENS = (
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>",
    "<|video_pad|>",
)
"""Qwen2-VL's special tokens (the tiny vocabulary holds these plus the 256 byte-level symbols)."""

QWEN2_VL_CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}"
    "{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
"""The chat template Qwen2-VL-Instruct and Qwen2.5-VL-Instruct ship (text parts concatenated,
each image a ``<|vision_start|><|image_pad|><|vision_end|>`` placeholder)."""

FAMILIES = ("qwen2_vl", "qwen2_5_vl")


def build_tiny_tokenizer() -> transformers.PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer (256 byte symbols, no merges) plus Qwen2-VL's special tokens."""
    vocab = {symbol: i for i, symbol in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS])
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, eos_token="<|im_end|>", pad_token="<|endoftext|>",
    )


def build_tiny_qwen2vl(
    out_dir: Union[str, Path],
    *,
    family: str = "qwen2_vl",
    seed: int = 0,
    hidden_size: int = 64,
    num_layers: int = 2,
    vision_depth: int = 1,
    vision_embed_dim: int = 32,
    min_pixels: int = 28 * 28 * 4,
    max_pixels: int = 28 * 28 * 16,
) -> Path:
    """Build and save a tiny random Qwen2-VL (``family="qwen2_vl"``) or Qwen2.5-VL (``"qwen2_5_vl"``).

    The folder holds ``config.json``, ``generation_config.json``, ``model.safetensors``, the
    tokenizer, the image (and video) processor and ``chat_template.jinja``. ``min_pixels`` and
    ``max_pixels`` are the image processor's bounds (the defaults give 4 to 16 image tokens per
    image, so prompts stay short). Returns the folder.
    """
    if family not in FAMILIES:
        raise ValueError(f"family: expected one of {FAMILIES}, got {family!r}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tiny_tokenizer()
    ids = dict(zip(SPECIAL_TOKENS, tokenizer.convert_tokens_to_ids(list(SPECIAL_TOKENS))))
    heads = 4
    head_dim = hidden_size // heads
    half = head_dim // 2  # mrope sections (temporal, height, width) split half the head dim
    mrope = [half - 2 * (half // 3), half // 3, half // 3]
    text = dict(
        vocab_size=len(tokenizer), hidden_size=hidden_size, intermediate_size=2 * hidden_size,
        num_hidden_layers=num_layers, num_attention_heads=heads, num_key_value_heads=2,
        max_position_embeddings=4096, rope_parameters={"rope_type": "default", "mrope_section": mrope,
                                                        "rope_theta": 10000.0},
        bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"],
    )
    tokens = dict(
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
    )
    if family == "qwen2_vl":
        vision = dict(depth=vision_depth, embed_dim=vision_embed_dim, hidden_size=hidden_size, num_heads=2,
                      mlp_ratio=2, patch_size=14, spatial_merge_size=2, temporal_patch_size=2)
        config = transformers.Qwen2VLConfig(text_config=text, vision_config=vision, **tokens)
        model_cls: Any = transformers.Qwen2VLForConditionalGeneration
    else:
        vision = dict(depth=vision_depth, hidden_size=vision_embed_dim, intermediate_size=2 * vision_embed_dim,
                      out_hidden_size=hidden_size, num_heads=2, patch_size=14, spatial_merge_size=2,
                      temporal_patch_size=2, window_size=56, fullatt_block_indexes=[vision_depth - 1])
        config = transformers.Qwen2_5_VLConfig(text_config=text, vision_config=vision, **tokens)
        model_cls = transformers.Qwen2_5_VLForConditionalGeneration
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = model_cls(config)
    model.generation_config.eos_token_id = ids["<|im_end|>"]
    model.generation_config.pad_token_id = ids["<|endoftext|>"]
    model.generation_config.bos_token_id = ids["<|endoftext|>"]
    model.save_pretrained(out)
    image_processor = transformers.Qwen2VLImageProcessor(min_pixels=min_pixels, max_pixels=max_pixels)
    processor_cls = transformers.Qwen2VLProcessor if family == "qwen2_vl" else transformers.Qwen2_5_VLProcessor
    processor = processor_cls(
        image_processor=image_processor, tokenizer=tokenizer, video_processor=transformers.Qwen2VLVideoProcessor(),
        chat_template=QWEN2_VL_CHAT_TEMPLATE,
    )
    processor.save_pretrained(out)
    return out


class ScriptedReply(transformers.LogitsProcessor):
    """Forces ``generate`` to write a scripted reply, then ``eos_token_id`` (greedy or sampled).

    ``scripts`` holds one token-id list per ``generate`` call: call 1 writes ``scripts[0]``,
    call 2 ``scripts[1]``, ..., and the last one repeats. ``ScriptedReply.for_texts(tokenizer,
    "not json", '{"success": true}')`` scripts text replies (a bad one, then a good one).
    ``generations`` counts the ``generate`` calls seen.
    """

    def __init__(self, scripts: Sequence[Sequence[int]], eos_token_id: int) -> None:
        if not scripts:
            raise ValueError("ScriptedReply needs at least one script")
        self.scripts = [list(ids) + [int(eos_token_id)] for ids in scripts]
        self.generations = 0
        self._previous: torch.Tensor | None = None
        self._prompt_length = 0

    @classmethod
    def for_texts(cls, tokenizer: Any, *texts: str) -> "ScriptedReply":
        """Script ``texts`` (encoded without special tokens), each followed by the tokenizer's eos token."""
        return cls([tokenizer.encode(t, add_special_tokens=False) for t in texts], tokenizer.eos_token_id)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        previous = self._previous
        continuing = (
            previous is not None and input_ids.shape[1] == previous.shape[1] + 1
            and torch.equal(input_ids[:, :-1], previous)
        )
        if not continuing:  # a new generate() call: the sequence so far is its prompt
            self._prompt_length = input_ids.shape[1]
            self.generations += 1
        self._previous = input_ids.detach().clone()
        script = self.scripts[min(self.generations, len(self.scripts)) - 1]
        token = script[min(input_ids.shape[1] - self._prompt_length, len(script) - 1)]
        forced = torch.full_like(scores, float("-inf"))
        forced[:, token] = 0.0
        return forced


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m planner.backends.tiny_model OUT_DIR [--family qwen2_5_vl] [--seed N]``."""
    parser = argparse.ArgumentParser(description="Build a tiny random Qwen2-VL folder for smoke tests (noise replies).")
    parser.add_argument("out_dir")
    parser.add_argument("--family", choices=FAMILIES, default="qwen2_vl")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    print(build_tiny_qwen2vl(args.out_dir, family=args.family, seed=args.seed))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
