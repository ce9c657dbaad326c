"""DexVLA's vision-language backbone: a Qwen2-VL that reads the camera views and the instruction,
writes a short sub-step reasoning, and hands its hidden states to the action expert.

Two ways to build it (nothing is downloaded in either):

* ``DexVLABackbone(model_path=DIR)``: ``Qwen2VLForConditionalGeneration`` and its processor from a
  local folder with ``local_files_only=True`` (the official Qwen2-VL-2B-Instruct folder as is, or a
  folder written by :meth:`DexVLABackbone.save_pretrained`);
* ``DexVLABackbone(preset="tiny" | "small")`` (or ``config={...}`` sizes): a randomly initialised
  Qwen2-VL of the real architecture, with the offline byte-level tokenizer of
  :mod:`planner.backends.tiny_model` (Qwen2-VL's special tokens, any text encodes) and the Qwen2-VL
  chat template. ``tiny`` is for tests (seconds); ``small`` is small enough to train on a CPU.

Sequence layout (as the reference's data processor builds it)::

    [left pad] <chat prompt: system, user {image x V, instruction}, "assistant\\n"> | answer
    answer = reasoning + "Next action:" + "<|im_end|>"

The **prompt hidden states** are the last-layer (normed) states of the non-padded prompt tokens;
the **reasoning hidden states** are those of the answer tokens *as inputs*, i.e. every answer token
but the final ``<|im_end|>`` -- at inference the same tokens are the ones fed back through the KV
cache (the last generated token is never fed), so training and inference pool the same positions.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
import transformers

from planner.backends.tiny_model import QWEN2_VL_CHAT_TEMPLATE, SPECIAL_TOKENS, build_tiny_tokenizer

ANSWER_SUFFIX = "Next action:"
"""Appended to the reasoning in the LM target (the reference's answer format); stripped from the
generated text."""

#: Sizes of the randomly initialised backbones (text: hidden, layers, heads, KV heads, MLP width;
#: vision: depth, width, heads; image-processor pixel bounds -> tokens per image). Optional keys
#: (defaults in :func:`build_qwen2vl_config`): ``vocab_size`` (embedding/lm_head rows, padded past
#: the tokenizer's), ``rope_theta``, ``mrope_section``, ``vision_mlp_ratio``, ``tie_word_embeddings``,
#: ``max_position_embeddings``.
PRESETS: Dict[str, Dict[str, Any]] = {
    "tiny": dict(hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2, intermediate_size=128,
                 vision_depth=1, vision_embed_dim=32, vision_heads=2,
                 min_pixels=28 * 28 * 4, max_pixels=28 * 28 * 16),
    "small": dict(hidden_size=256, num_layers=4, num_heads=4, num_kv_heads=2, intermediate_size=768,
                  vision_depth=2, vision_embed_dim=128, vision_heads=4,
                  min_pixels=28 * 28 * 4, max_pixels=28 * 28 * 16),
    # Qwen2-VL-2B(-Instruct) at its published architecture, random weights (benchmarks): the text and
    # vision numbers are those of the model's config.json (hidden 1536, 28 layers, 12 heads, 2 KV heads,
    # MLP 8960, vocab 151936, rope theta 1e6, M-RoPE [16, 24, 24], tied embeddings; ViT depth 32,
    # width 1280, 16 heads, mlp_ratio 4, patch 14, temporal patch 2, merge 2), checked against public
    # copies of that config; the pixel bounds are transformers' Qwen2VLImageProcessor defaults. With
    # these sizes the model has 2,208,985,600 parameters, as the published checkpoint (4,417,971,200
    # bf16 bytes in its model.safetensors.index.json). The vocabulary is padded to 151936 rows
    # past the offline tokenizer's ids (rows it never produces) so that parameters and FLOPs match.
    "qwen2vl_2b": dict(hidden_size=1536, num_layers=28, num_heads=12, num_kv_heads=2, intermediate_size=8960,
                       vision_depth=32, vision_embed_dim=1280, vision_heads=16, vision_mlp_ratio=4,
                       vocab_size=151936, rope_theta=1000000.0, mrope_section=[16, 24, 24],
                       tie_word_embeddings=True, max_position_embeddings=32768,
                       min_pixels=56 * 56, max_pixels=28 * 28 * 1280),
}


def build_qwen2vl_config(tokenizer: Any, sizes: Mapping[str, Any]) -> transformers.Qwen2VLConfig:
    """A Qwen2-VL config of the given ``sizes`` (see :data:`PRESETS`) for ``tokenizer``'s vocabulary
    (``sizes["vocab_size"]``, if larger, pads it)."""
    ids = dict(zip(SPECIAL_TOKENS, tokenizer.convert_tokens_to_ids(list(SPECIAL_TOKENS))))
    hidden, heads = int(sizes["hidden_size"]), int(sizes["num_heads"])
    half = hidden // heads // 2  # M-RoPE sections (temporal, height, width) split half the head dim
    mrope = [int(m) for m in sizes.get("mrope_section") or [half - 2 * (half // 3), half // 3, half // 3]]
    if sum(mrope) != half:
        raise ValueError(f"mrope_section {mrope} must sum to half the head dim ({half})")
    text = dict(vocab_size=max(len(tokenizer), int(sizes.get("vocab_size", 0))), hidden_size=hidden,
                intermediate_size=int(sizes["intermediate_size"]),
                num_hidden_layers=int(sizes["num_layers"]), num_attention_heads=heads,
                num_key_value_heads=int(sizes["num_kv_heads"]),
                max_position_embeddings=int(sizes.get("max_position_embeddings", 4096)),
                rope_parameters={"rope_type": "default", "mrope_section": mrope,
                                 "rope_theta": float(sizes.get("rope_theta", 10000.0))},
                bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"],
                pad_token_id=ids["<|endoftext|>"])
    vision = dict(depth=int(sizes["vision_depth"]), embed_dim=int(sizes["vision_embed_dim"]), hidden_size=hidden,
                  num_heads=int(sizes["vision_heads"]), mlp_ratio=sizes.get("vision_mlp_ratio", 2), patch_size=14,
                  spatial_merge_size=2, temporal_patch_size=2)
    return transformers.Qwen2VLConfig(
        text_config=text, vision_config=vision, image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"], vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=bool(sizes.get("tie_word_embeddings", False)))


def build_processor(tokenizer: Any, min_pixels: int, max_pixels: int) -> transformers.Qwen2VLProcessor:
    """Qwen2-VL processor around ``tokenizer`` with the given image-pixel bounds."""
    return transformers.Qwen2VLProcessor(
        image_processor=transformers.Qwen2VLImageProcessor(min_pixels=min_pixels, max_pixels=max_pixels),
        tokenizer=tokenizer, video_processor=transformers.Qwen2VLVideoProcessor(),
        chat_template=QWEN2_VL_CHAT_TEMPLATE)


def _hidden_size(model: nn.Module) -> int:
    cfg = model.config
    return int(getattr(cfg, "text_config", cfg).hidden_size)


class DexVLABackbone(nn.Module):
    """Qwen2-VL wrapper: prompt encoding, greedy reasoning generation, teacher-forced LM loss.

    Args:
        model_path: local folder of a Qwen2-VL checkpoint (loaded with ``local_files_only=True``).
        preset: ``"tiny"`` / ``"small"`` / ``"qwen2vl_2b"`` random backbone (when ``model_path`` is None).
        config: size overrides of the preset (keys of :data:`PRESETS`).
        freeze_vision: no gradient to the vision tower (DexVLA trains the LLM, not the ViT).
        max_reasoning_tokens: token limit of :meth:`generate_reasoning`.
        seed: initialisation seed of a random backbone (reproducible weights).
        dtype: parameter dtype of a loaded checkpoint (``"float32"``, ``"bfloat16"``).
    """

    def __init__(self, model_path: Optional[str] = None, preset: Optional[str] = "tiny",
                 config: Optional[Mapping[str, int]] = None, freeze_vision: bool = True,
                 max_reasoning_tokens: int = 32, seed: int = 0, dtype: str = "float32") -> None:
        super().__init__()
        if model_path:
            path = Path(model_path)
            if not path.is_dir():
                raise FileNotFoundError(f"backbone model_path '{model_path}' is not a local folder")
            self.model = transformers.Qwen2VLForConditionalGeneration.from_pretrained(
                str(path), local_files_only=True, dtype=getattr(torch, dtype))
            self.processor = transformers.AutoProcessor.from_pretrained(str(path), local_files_only=True)
        else:
            if preset not in PRESETS:
                raise ValueError(f"backbone preset must be one of {sorted(PRESETS)} (or give model_path), "
                                 f"got {preset!r}")
            sizes = {**PRESETS[preset], **dict(config or {})}
            tokenizer = build_tiny_tokenizer()
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                self.model = transformers.Qwen2VLForConditionalGeneration(build_qwen2vl_config(tokenizer, sizes))
            self.processor = build_processor(tokenizer, sizes["min_pixels"], sizes["max_pixels"])
        self.tokenizer = self.processor.tokenizer
        self.tokenizer.padding_side = "left"  # prompts are left-padded (generation appends on the right)
        self.eos_id = int(self.tokenizer.convert_tokens_to_ids("<|im_end|>"))
        pad = self.tokenizer.pad_token_id
        self.pad_id = int(pad if pad is not None else self.tokenizer.convert_tokens_to_ids("<|endoftext|>"))
        self.hidden_size = _hidden_size(self.model)
        self.max_reasoning_tokens = int(max_reasoning_tokens)
        self.set_vision_trainable(not freeze_vision)

    # ------------------------------------------------------------------ setup
    def set_vision_trainable(self, trainable: bool) -> None:
        """Freeze (False) or unfreeze (True) the vision tower."""
        self.model.model.visual.requires_grad_(bool(trainable))

    def save_pretrained(self, folder: Union[str, Path]) -> Path:
        """Write model, tokenizer, processor and chat template to ``folder``; it then loads with
        ``DexVLABackbone(model_path=folder)`` offline. Returns the folder."""
        out = Path(folder)
        out.mkdir(parents=True, exist_ok=True)
        self.model.save_pretrained(out)
        self.processor.save_pretrained(out)
        return out

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    # ------------------------------------------------------------------ inputs
    def prompt_inputs(self, images: torch.Tensor, instructions: Sequence[str]) -> Dict[str, torch.Tensor]:
        """Processor inputs of the chat prompts.

        images: (B, V, 3, H, W) RGB, uint8 or float in [0, 1]; instructions: B strings.
        Returns input_ids / attention_mask (B, L) left-padded, pixel_values, image_grid_thw, ...
        """
        if images.dim() != 5 or images.shape[2] != 3:
            raise ValueError(f"images must be (B, V, 3, H, W), got {tuple(images.shape)}")
        B, V = images.shape[:2]
        if len(instructions) != B:
            raise ValueError(f"{len(instructions)} instructions for a batch of {B}")
        if images.dtype != torch.uint8:
            images = (images.detach().float().clamp(0, 1) * 255).round().to(torch.uint8)  # (B, V, 3, H, W)
        images = images.cpu()
        texts = []
        for text in instructions:
            content = [{"type": "image"} for _ in range(V)] + [{"type": "text", "text": str(text)}]
            texts.append(self.processor.apply_chat_template([{"role": "user", "content": content}],
                                                            tokenize=False, add_generation_prompt=True))
        flat = [images[b, v] for b in range(B) for v in range(V)]  # B*V of (3, H, W), sample-major
        inputs = self.processor(text=texts, images=flat, padding=True, return_tensors="pt")
        dev = self.device
        return {k: (v.to(dev) if torch.is_tensor(v) else v) for k, v in inputs.items()}

    def _forward(self, inputs: Mapping[str, torch.Tensor]):
        out = self.model(**inputs, output_hidden_states=True, use_cache=False)
        return out, out.hidden_states[-1]                                  # logits (B, L, V), (B, L, D)

    # ------------------------------------------------------------------ encode
    def encode(self, images: torch.Tensor, instructions: Sequence[str]) -> Dict[str, torch.Tensor]:
        """Prompt hidden states without reasoning: {'prompt_hidden': (B, L, D), 'prompt_mask': (B, L) bool}."""
        inputs = self.prompt_inputs(images, instructions)
        _, hidden = self._forward(inputs)                                  # (B, L, D)
        return {"prompt_hidden": hidden, "prompt_mask": inputs["attention_mask"].bool()}

    # ------------------------------------------------------------------ generation
    @torch.no_grad()
    def generate_reasoning(self, images: torch.Tensor, instructions: Sequence[str],
                           max_new_tokens: Optional[int] = None, logits_processor: Any = None) -> Dict[str, Any]:
        """Greedy generation with the KV cache, at most ``max_new_tokens`` (default
        ``max_reasoning_tokens``) tokens. ``logits_processor``: optional list passed to ``generate``
        (tests script the reply with :class:`planner.backends.tiny_model.ScriptedReply`).

        Returns {'text': B strings (special tokens and the "Next action:" suffix removed),
        'prompt_hidden': (B, L, D), 'prompt_mask': (B, L) bool, 'reasoning_hidden': (B, L_r, D),
        'reasoning_mask': (B, L_r) bool, 'token_ids': (B, L_r + 1)} where L_r = generated - 1.
        """
        inputs = self.prompt_inputs(images, instructions)
        n = int(max_new_tokens or self.max_reasoning_tokens)
        gen_cfg = transformers.GenerationConfig(do_sample=False, num_beams=1, max_new_tokens=n, use_cache=True,
                                                eos_token_id=self.eos_id, pad_token_id=self.pad_id,
                                                output_hidden_states=True, return_dict_in_generate=True)
        extra = {"logits_processor": transformers.LogitsProcessorList(logits_processor)} if logits_processor else {}
        out = self.model.generate(**inputs, generation_config=gen_cfg, **extra)
        L = inputs["input_ids"].shape[1]
        tokens = out.sequences[:, L:]                                      # (B, G)
        prompt_hidden = out.hidden_states[0][-1]                           # (B, L, D)
        fed = [step[-1] for step in out.hidden_states[1:]]                 # G-1 x (B, 1, D)
        B, D = prompt_hidden.shape[0], prompt_hidden.shape[-1]
        reasoning_hidden = (torch.cat(fed, dim=1) if fed else prompt_hidden.new_zeros(B, 0, D))  # (B, G-1, D)
        ended = (tokens == self.eos_id).long().cumsum(dim=1) > 0           # (B, G): eos at or before
        reasoning_mask = ~ended[:, :reasoning_hidden.shape[1]]             # (B, G-1)
        return {"text": self.decode(tokens), "prompt_hidden": prompt_hidden,
                "prompt_mask": inputs["attention_mask"].bool(), "reasoning_hidden": reasoning_hidden,
                "reasoning_mask": reasoning_mask, "token_ids": tokens}

    def decode(self, tokens: torch.Tensor) -> List[str]:
        """(B, G) generated ids -> B strings up to the first eos, without the answer suffix."""
        texts = []
        for row in tokens.tolist():
            if self.eos_id in row:
                row = row[:row.index(self.eos_id)]
            text = self.tokenizer.decode(row, skip_special_tokens=True).strip()
            if text.endswith(ANSWER_SUFFIX):
                text = text[:-len(ANSWER_SUFFIX)].rstrip()
            texts.append(text)
        return texts

    # ------------------------------------------------------------------ teacher forcing
    def answer_ids(self, reasoning: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Reasoning strings -> answer ids (B, La) right-padded with pad, and their lengths (B,)."""
        rows = [self.tokenizer.encode(str(r) + ANSWER_SUFFIX, add_special_tokens=False) + [self.eos_id]
                for r in reasoning]
        La = max(len(r) for r in rows)
        ids = torch.full((len(rows), La), self.pad_id, dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, :len(r)] = torch.tensor(r, dtype=torch.long)
        return ids.to(self.device), torch.tensor([len(r) for r in rows], device=self.device)

    def lm_forward(self, images: torch.Tensor, instructions: Sequence[str],
                   reasoning: Sequence[str]) -> Dict[str, torch.Tensor]:
        """Teacher-forced pass over prompt + answer (training).

        Returns {'lm_loss': scalar next-token cross-entropy on the answer tokens,
        'prompt_hidden': (B, Lp, D), 'prompt_mask': (B, Lp), 'reasoning_hidden': (B, La, D),
        'reasoning_mask': (B, La) (answer tokens but the last, as at inference)}.
        """
        if len(reasoning) != len(instructions):
            raise ValueError(f"{len(reasoning)} reasoning strings for {len(instructions)} instructions")
        inputs = self.prompt_inputs(images, instructions)
        prompt_ids, prompt_mask = inputs["input_ids"], inputs["attention_mask"]       # (B, Lp)
        ans, lengths = self.answer_ids(reasoning)                                      # (B, La), (B,)
        B, La = ans.shape
        steps = torch.arange(La, device=ans.device).expand(B, La)                      # (B, La)
        ans_valid = steps < lengths.unsqueeze(1)                                       # (B, La)
        full = dict(inputs)
        full["input_ids"] = torch.cat([prompt_ids, ans], dim=1)                        # (B, Lp + La)
        full["attention_mask"] = torch.cat([prompt_mask, ans_valid.to(prompt_mask.dtype)], dim=1)
        if "mm_token_type_ids" in inputs:  # answer tokens are text
            full["mm_token_type_ids"] = torch.cat([inputs["mm_token_type_ids"], torch.zeros_like(ans)], dim=1)
        out, hidden = self._forward(full)                                              # (B, Lp+La, D)
        Lp = prompt_ids.shape[1]
        labels = torch.where(ans_valid, ans, torch.full_like(ans, -100))               # (B, La)
        logits = out.logits[:, Lp - 1:-1].float()                                      # (B, La, V): predicts answer
        lm_loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=-100)
        return {"lm_loss": lm_loss, "prompt_hidden": hidden[:, :Lp], "prompt_mask": prompt_mask.bool(),
                "reasoning_hidden": hidden[:, Lp:], "reasoning_mask": steps < (lengths - 1).unsqueeze(1)}
