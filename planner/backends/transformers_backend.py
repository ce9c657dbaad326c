"""The local backend: Qwen2-VL / Qwen2.5-VL loaded from a folder and run with ``transformers``.

``backend: transformers`` in the planner config (``inference_utils/config/planner/transformers.yaml``)
makes ``DexGraspVLAPlanner`` run the same task prompts, parsers and retries as over HTTP, with
this transport in place of the HTTP request:

1. the OpenAI-style messages the client builds (system + user, text and image parts) become the
   processor's chat template; images travel as pixel arrays (no PNG/JPEG round trip);
2. ``model.generate`` runs (greedy at temperature 0, sampling otherwise; ``max_new_tokens`` is
   the client's ``max_tokens``), stopping at the attempt's deadline (checked after every token);
3. the new tokens are decoded (special tokens skipped) and returned as the reply text.

Loading is lazy (first request, or ``DexGraspVLAPlanner.warm_up()``) and happens once per
process per (folder, device, dtype, attention implementation): every planner built on the same
folder shares the weights. Nothing is downloaded: ``from_pretrained(..., local_files_only=True)``
and no remote code.

Failures raise ``TransportFailure`` with the kinds ``load``, ``bad_input``, ``out_of_memory``,
``generation``, ``timeout`` (none retried: the same input fails the same way) and
``empty_output`` (counted as an unparsable reply: re-asked up to ``parse_retries`` times).
"""

from __future__ import annotations

import copy
import json
import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional, Union

import numpy as np
import torch
import transformers

from planner.backends.base import ChatTransport, Completion, TransportFailure
from planner.images import ImageDecodeError, check_bgr_image, from_data_url

MODEL_CLASSES = {
    "qwen2_vl": "Qwen2VLForConditionalGeneration",
    "qwen2_5_vl": "Qwen2_5_VLForConditionalGeneration",
}
"""``model_type`` in the folder's ``config.json`` -> the ``transformers`` class that loads it.
Other image-text-to-text models go through ``AutoModelForImageTextToText`` (untested)."""

DTYPES = {
    "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
    "fp16": torch.float16, "float16": torch.float16, "half": torch.float16,
    "fp32": torch.float32, "float32": torch.float32, "float": torch.float32,
}
"""Accepted ``dtype`` names (besides ``auto``)."""

_LOCAL_NOTE = "a local model fails the same way on the same input"
_TRANSFORMERS_MAJOR = int(transformers.__version__.split(".")[0])
_OOM_ERRORS: tuple[type[BaseException], ...] = tuple(
    {getattr(torch, "OutOfMemoryError", None), getattr(torch.cuda, "OutOfMemoryError", None)} - {None}
)

_log = logging.getLogger(__name__)


# ---------------------------------------------------------------------- device and dtype
def select_device(device: Optional[str] = "auto") -> str:
    """The torch device to run on: ``auto`` picks cuda, then mps, then cpu.

    An explicit ``cuda``/``cuda:N``/``mps``/``cpu`` is checked (``ValueError`` if unavailable).
    """
    name = str(device or "auto").strip().lower()
    if name == "auto":
        if torch.cuda.is_available():
            return "cuda"
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return "mps"
        return "cpu"
    try:
        parsed = torch.device(name)
    except (RuntimeError, ValueError) as exc:
        raise ValueError(f"planner.device: expected auto, cuda, cuda:N, mps or cpu, got {device!r}") from exc
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"planner.device={device!r}: CUDA is not available on this machine (use auto or cpu)")
        if parsed.index is not None and parsed.index >= torch.cuda.device_count():
            raise ValueError(f"planner.device={device!r}: only {torch.cuda.device_count()} CUDA device(s)")
    elif parsed.type == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise ValueError(f"planner.device={device!r}: MPS is not available on this machine (use auto or cpu)")
    elif parsed.type != "cpu":
        raise ValueError(f"planner.device: expected auto, cuda, cuda:N, mps or cpu, got {device!r}")
    return name


def select_dtype(dtype: Optional[str], device: str) -> torch.dtype:
    """The weights' dtype: ``auto`` is bf16 on CUDA (fp16 where bf16 is unsupported), fp16 on
    MPS and fp32 on CPU; or one of ``DTYPES``."""
    name = str(dtype or "auto").strip().lower()
    if name == "auto":
        kind = torch.device(device).type
        if kind == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float16 if kind == "mps" else torch.float32
    if name not in DTYPES:
        raise ValueError(f"planner.dtype: expected auto, bf16, fp16 or fp32, got {dtype!r}")
    return DTYPES[name]


def _dtype_name(dtype: torch.dtype) -> str:
    return {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32"}.get(dtype, str(dtype))


# ---------------------------------------------------------------------- the per-process cache
@dataclass
class LoadedModel:
    """A model and the lock that serialises ``generate`` on it (shared by every transport)."""

    model: Any
    device: str
    dtype: torch.dtype
    model_type: str
    load_seconds: float
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)


_MODELS: dict[tuple[str, str, str, Optional[str]], LoadedModel] = {}
_PROCESSORS: dict[tuple[str, Optional[int], Optional[int]], Any] = {}
_CACHE_LOCK = threading.Lock()


def unload_models() -> None:
    """Forget every cached model and processor (frees the memory once nothing else holds them)."""
    with _CACHE_LOCK:
        _MODELS.clear()
        _PROCESSORS.clear()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _model_type(path: Path) -> str:
    try:
        config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path / 'config.json'} is not a readable JSON file: {exc}") from exc
    return str(config.get("model_type") or "")


def _load_processor(path: Path, min_pixels: Optional[int], max_pixels: Optional[int]) -> Any:
    key = (str(path), min_pixels, max_pixels)
    with _CACHE_LOCK:
        if key not in _PROCESSORS:
            processor = transformers.AutoProcessor.from_pretrained(str(path), local_files_only=True)
            if min_pixels is not None or max_pixels is not None:
                size = getattr(getattr(processor, "image_processor", None), "size", None)
                if _TRANSFORMERS_MAJOR >= 5 and size is not None:  # v5: size={shortest,longest}_edge in pixels
                    bounds = {"shortest_edge": min_pixels or size["shortest_edge"],
                              "longest_edge": max_pixels or size["longest_edge"]}
                    kwargs: dict[str, Any] = {"size": bounds}
                else:  # v4: min_pixels / max_pixels
                    kwargs = {k: v for k, v in (("min_pixels", min_pixels), ("max_pixels", max_pixels)) if v}
                processor = transformers.AutoProcessor.from_pretrained(str(path), local_files_only=True, **kwargs)
            if getattr(processor, "image_processor", None) is None or getattr(processor, "tokenizer", None) is None:
                raise ValueError(f"{path}: the processor has no image processor or tokenizer (not a VLM folder?)")
            if not getattr(processor, "chat_template", None):
                raise ValueError(f"{path}: no chat template (chat_template.jinja/.json or in tokenizer_config.json)")
            _PROCESSORS[key] = processor
        return _PROCESSORS[key]


def _load_model(path: Path, device: str, dtype: torch.dtype, attn_implementation: Optional[str]) -> LoadedModel:
    key = (str(path), device, _dtype_name(dtype), attn_implementation)
    with _CACHE_LOCK:
        if key in _MODELS:
            return _MODELS[key]
        model_type = _model_type(path)
        class_name = MODEL_CLASSES.get(model_type, "AutoModelForImageTextToText")
        if model_type not in MODEL_CLASSES:
            _log.warning("planner: %s has model_type %r; loading it with %s (only Qwen2-VL and Qwen2.5-VL are "
                         "tested)", path, model_type, class_name)
        cls = getattr(transformers, class_name)
        kwargs: dict[str, Any] = {"local_files_only": True, "trust_remote_code": False}
        kwargs["dtype" if _TRANSFORMERS_MAJOR >= 5 else "torch_dtype"] = dtype
        if attn_implementation:
            kwargs["attn_implementation"] = attn_implementation
        if device != "cpu":
            kwargs["device_map"] = device  # straight onto the accelerator, no full copy in host memory
        start = time.monotonic()
        model = cls.from_pretrained(str(path), **kwargs)
        model.eval()
        loaded = LoadedModel(model, device, dtype, model_type, time.monotonic() - start)
        _log.info("planner: loaded %s (%s) on %s in %s in %.1f s", path, class_name, device, _dtype_name(dtype),
                  loaded.load_seconds)
        _MODELS[key] = loaded
        return loaded


# ---------------------------------------------------------------------- the transport
class _DeadlineCriteria(transformers.StoppingCriteria):
    """Stops ``generate`` once ``time.monotonic()`` passes the attempt's deadline."""

    def __init__(self, deadline: float) -> None:
        self.deadline = deadline
        self.expired = False

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs: Any) -> torch.BoolTensor:
        if time.monotonic() >= self.deadline:
            self.expired = True
        return torch.full((input_ids.shape[0],), self.expired, dtype=torch.bool, device=input_ids.device)


@dataclass
class LocalRequest:
    """What the last request fed the model and got back (for logs, debugging and tests).

    Attributes:
        prompt_text: the chat template's output (image placeholders not yet expanded).
        input_ids: the token ids given to ``generate`` (image placeholders expanded).
        image_grid_thw: per image, the (t, h, w) patch grid the processor made.
        image_tokens: how many image placeholder tokens ``input_ids`` holds.
        new_token_ids: the generated ids (special tokens included).
        seconds: preprocessing + generation time.
    """

    prompt_text: str
    input_ids: list[int]
    image_grid_thw: list[list[int]]
    image_tokens: int
    new_token_ids: list[int] = field(default_factory=list)
    seconds: float = 0.0


class TransformersTransport(ChatTransport):
    """Runs the planner's chat requests on a local Qwen2-VL / Qwen2.5-VL with ``transformers``.

    Args:
        model_path: folder with ``config.json``, the weights, the tokenizer, the image
            processor and a chat template (as ``save_pretrained`` writes them, e.g. a download
            of ``Qwen/Qwen2.5-VL-7B-Instruct``).
        device: ``auto`` (cuda, then mps, then cpu), ``cuda``, ``cuda:N``, ``mps`` or ``cpu``.
        dtype: ``auto`` (bf16 on CUDA, fp16 on MPS, fp32 on CPU), ``bf16``, ``fp16`` or ``fp32``.
        min_pixels, max_pixels: the image processor's resize bounds per image (``None``: the
            folder's). Keep ``max_pixels`` at least the camera's pixel count so that Qwen2.5-VL's
            absolute box coordinates refer to the image as sent.
        attn_implementation: e.g. ``sdpa`` or ``flash_attention_2`` (``None``: transformers' choice).
        model_name: the id written to logs (default: the folder's name).
        generate_kwargs: extra ``generate`` arguments (e.g. ``repetition_penalty``, a
            ``logits_processor``); they win over the transport's own.
    """

    name = "transformers"
    request_name = "generation"

    def __init__(
        self,
        model_path: Union[str, Path],
        device: Optional[str] = "auto",
        dtype: Optional[str] = "auto",
        min_pixels: Optional[int] = None,
        max_pixels: Optional[int] = None,
        attn_implementation: Optional[str] = None,
        model_name: Optional[str] = None,
        generate_kwargs: Optional[Mapping[str, Any]] = None,
    ) -> None:
        path = Path(str(model_path)).expanduser()
        if not path.is_dir():
            raise ValueError(f"planner.model_path: {str(model_path)!r} is not a directory (a local model folder)")
        if not (path / "config.json").is_file():
            raise ValueError(f"planner.model_path: {str(path)!r} has no config.json (not a transformers model folder)")
        for key, value in (("min_pixels", min_pixels), ("max_pixels", max_pixels)):
            if value is not None and (isinstance(value, bool) or int(value) < 1):
                raise ValueError(f"planner.{key}: expected a positive number of pixels or null, got {value!r}")
        if min_pixels is not None and max_pixels is not None and int(min_pixels) > int(max_pixels):
            raise ValueError(f"planner.min_pixels ({min_pixels}) is larger than planner.max_pixels ({max_pixels})")
        self.model_path = path.resolve()
        self.device = select_device(device)
        self.dtype = select_dtype(dtype, self.device)
        self.min_pixels = None if min_pixels is None else int(min_pixels)
        self.max_pixels = None if max_pixels is None else int(max_pixels)
        self.attn_implementation = attn_implementation or None
        self.model = model_name or self.model_path.name
        self.generate_kwargs = dict(generate_kwargs or {})
        self.last_request: Optional[LocalRequest] = None
        self._loaded: Optional[LoadedModel] = None
        self._processor: Any = None

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> "TransformersTransport":
        """From the planner config: ``model_path`` (required), ``device``, ``dtype``, ``min_pixels``,
        ``max_pixels``, ``attn_implementation``, ``model_name``, ``generate_kwargs``."""
        if not cfg.get("model_path"):
            raise ValueError("planner.model_path: required for planner.backend=transformers (a local model folder, "
                             "e.g. a download of Qwen/Qwen2.5-VL-7B-Instruct)")
        extra = cfg.get("generate_kwargs") or {}
        return cls(
            model_path=str(cfg["model_path"]),
            device=cfg.get("device", "auto"),
            dtype=cfg.get("dtype", "auto"),
            min_pixels=cfg.get("min_pixels"),
            max_pixels=cfg.get("max_pixels"),
            attn_implementation=cfg.get("attn_implementation"),
            model_name=cfg.get("model_name"),
            generate_kwargs={str(k): v for k, v in dict(extra).items()},
        )

    # ------------------------------------------------------------------ ChatTransport
    def image_part(self, image_bgr: np.ndarray) -> dict[str, Any]:
        """``{"type": "image", "image": <RGB uint8 array>}``: the pixels themselves, no encoding."""
        return {"type": "image", "image": np.ascontiguousarray(check_bgr_image(image_bgr)[..., ::-1])}

    def warm_up(self, deadline: float) -> None:
        """Load the processor and the weights now (once per process)."""
        self._load()

    def log_info(self) -> dict[str, Any]:
        """Backend, folder, device and dtype."""
        return {"backend": self.name, "model_path": str(self.model_path), "device": self.device,
                "dtype": _dtype_name(self.dtype)}

    @property
    def processor(self) -> Any:
        """The loaded processor (loads it, and the model, on first use)."""
        self._load()
        return self._processor

    @property
    def hf_model(self) -> Any:
        """The loaded ``transformers`` model (loads it on first use)."""
        return self._load().model

    def complete(
        self,
        messages: list[dict[str, Any]],
        *,
        model: Optional[str],
        max_tokens: int,
        temperature: float,
        deadline: float,
    ) -> Completion:
        """Generate the assistant's reply to ``messages`` (one attempt, ended by ``deadline``)."""
        loaded = self._load()
        processor = self._processor
        start = time.monotonic()
        if start >= deadline:
            raise TransportFailure("timeout", "no time left for generation before the attempt's deadline",
                                   retryable=False, no_retry_note=_LOCAL_NOTE)
        conversation, images = self._conversation(messages)
        try:
            prompt_text = processor.apply_chat_template(conversation, tokenize=False, add_generation_prompt=True)
            image_kwargs = {"images": images, "input_data_format": "channels_last"} if images else {}
            inputs = processor(text=[prompt_text], return_tensors="pt", **image_kwargs)
        except Exception as exc:  # noqa: BLE001 (any processor error is a bad request)
            raise TransportFailure("bad_input", f"the processor refused the prompt: {type(exc).__name__}: {exc}",
                                   retryable=False, no_retry_note="the request itself is unusable") from None
        input_ids = inputs["input_ids"]
        grid = inputs.get("image_grid_thw")
        image_token_id = getattr(processor, "image_token_id", None)
        request = LocalRequest(
            prompt_text=prompt_text,
            input_ids=input_ids[0].tolist(),
            image_grid_thw=grid.tolist() if grid is not None else [],
            image_tokens=int((input_ids == image_token_id).sum()) if image_token_id is not None else 0,
        )
        self.last_request = request
        stop = _DeadlineCriteria(deadline)
        config = self._generation_config(loaded, max_tokens, temperature)
        try:
            with loaded.lock, torch.inference_mode():
                output = loaded.model.generate(
                    **inputs.to(loaded.device),
                    generation_config=config,
                    stopping_criteria=transformers.StoppingCriteriaList([stop]),
                    **self.generate_kwargs,
                )
        except _OOM_ERRORS as exc:
            raise self._out_of_memory(exc) from None
        except RuntimeError as exc:
            if "out of memory" in str(exc).lower():
                raise self._out_of_memory(exc) from None
            raise TransportFailure("generation", f"generate failed: {type(exc).__name__}: {exc}", retryable=False,
                                   no_retry_note=_LOCAL_NOTE) from None
        except Exception as exc:  # noqa: BLE001 (anything else from generate is a generation failure)
            raise TransportFailure("generation", f"generate failed: {type(exc).__name__}: {exc}", retryable=False,
                                   no_retry_note=_LOCAL_NOTE) from None
        new_ids = output[0, input_ids.shape[1]:].tolist()
        request.new_token_ids = new_ids
        request.seconds = time.monotonic() - start
        text = self._decode(new_ids)
        eos = config.eos_token_id
        eos_ids = set(eos if isinstance(eos, (list, tuple)) else [eos]) - {None}
        if stop.expired and not (new_ids and new_ids[-1] in eos_ids):
            raise TransportFailure(
                "timeout", f"generation stopped at the attempt's deadline after {len(new_ids)} token(s) "
                f"({request.seconds:.3g} s)", retryable=False, reply=text or None, no_retry_note=_LOCAL_NOTE,
            )
        usage = {
            "prompt_tokens": len(request.input_ids),
            "image_tokens": request.image_tokens,
            "completion_tokens": len(new_ids),
            "seconds": round(request.seconds, 4),
        }
        if not text.strip():
            raise TransportFailure("empty_output", f"the model generated no text ({len(new_ids)} token(s), all "
                                   "special or blank)", reply=text)
        return Completion(text=text, usage=usage)

    # ------------------------------------------------------------------ internals
    def _load(self) -> LoadedModel:
        if self._loaded is not None:
            return self._loaded
        try:
            processor = _load_processor(self.model_path, self.min_pixels, self.max_pixels)
            loaded = _load_model(self.model_path, self.device, self.dtype, self.attn_implementation)
        except _OOM_ERRORS as exc:
            raise TransportFailure("load", f"out of memory loading {self.model_path} on {self.device} in "
                                   f"{_dtype_name(self.dtype)}: {exc}", retryable=False,
                                   no_retry_note="loading the model failed") from None
        except Exception as exc:  # noqa: BLE001 (any load error: missing files, bad config, OOM, ...)
            raise TransportFailure("load", f"cannot load the model from {self.model_path}: {type(exc).__name__}: "
                                   f"{exc}", retryable=False, no_retry_note="loading the model failed") from None
        self._processor, self._loaded = processor, loaded
        return loaded

    def _conversation(self, messages: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[np.ndarray]]:
        """OpenAI-style messages -> the chat template's messages (image parts without pixels) + RGB images."""
        conversation: list[dict[str, Any]] = []
        images: list[np.ndarray] = []
        for message in messages:
            if not isinstance(message, Mapping) or not isinstance(message.get("role"), str):
                raise self._bad_input("every message needs a 'role'")
            content = message.get("content")
            if isinstance(content, str):
                content = [{"type": "text", "text": content}]
            if not isinstance(content, list):
                raise self._bad_input(f"{message['role']} message content must be a string or a list of parts")
            parts: list[dict[str, Any]] = []
            for part in content:
                kind = part.get("type") if isinstance(part, Mapping) else None
                if kind == "text":
                    parts.append({"type": "text", "text": str(part.get("text", ""))})
                elif kind == "image":
                    images.append(self._rgb(part.get("image")))
                    parts.append({"type": "image"})
                elif kind == "image_url":
                    images.append(self._rgb_from_url(part.get("image_url")))
                    parts.append({"type": "image"})
                else:
                    raise self._bad_input(f"unsupported content part type {kind!r} (text, image or image_url)")
            conversation.append({"role": message["role"], "content": parts})
        return conversation, images

    def _rgb(self, image: Any) -> np.ndarray:
        if not (isinstance(image, np.ndarray) and image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3):
            raise self._bad_input("an 'image' part must hold an RGB uint8 array of shape (H, W, 3)")
        return image

    def _rgb_from_url(self, image_url: Any) -> np.ndarray:
        url = image_url.get("url") if isinstance(image_url, Mapping) else image_url
        try:
            return np.ascontiguousarray(from_data_url(url)[..., ::-1])
        except ImageDecodeError as exc:
            raise self._bad_input(f"image_url: {exc} (the local backend reads data URLs only, no network)") from None

    @staticmethod
    def _bad_input(detail: str) -> TransportFailure:
        return TransportFailure("bad_input", detail, retryable=False, no_retry_note="the request itself is unusable")

    def _out_of_memory(self, exc: BaseException) -> TransportFailure:
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        return TransportFailure(
            "out_of_memory", f"out of memory generating on {self.device} ({type(exc).__name__}: {str(exc)[:300]}); "
            "lower max_pixels or max_new_tokens, or use a smaller model", retryable=False, no_retry_note=_LOCAL_NOTE,
        )

    def _generation_config(self, loaded: LoadedModel, max_tokens: int, temperature: float) -> Any:
        """The folder's generation config (eos ids, repetition penalty) with our length and sampling."""
        # Explicit neutral values: unset (None) fields would be filled from the folder's
        # generation_config.json, whose top_k=1 / top_p=0.001 (Qwen's) make sampling greedy.
        config = copy.deepcopy(loaded.model.generation_config)
        config.max_new_tokens = int(max_tokens)
        config.top_p = 1.0
        if temperature > 0:  # plain sampling from the whole distribution
            config.do_sample = True
            config.temperature = float(temperature)
            config.top_k = 0
        else:  # greedy; the values are transformers' defaults, so no "ignored flag" warnings
            config.do_sample = False
            config.temperature = 1.0
            config.top_k = 50
        if config.pad_token_id is None:
            tokenizer = self._processor.tokenizer
            config.pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        return config

    def _decode(self, token_ids: list[int]) -> str:
        """The reply text of the generated ids (special tokens dropped)."""
        return self._processor.tokenizer.decode(token_ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)
