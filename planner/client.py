"""The DexGraspVLA planner client: an OpenAI-compatible chat client, one method per task.

Works against any OpenAI-compatible VLM server (vLLM serving Qwen2.5-VL, DashScope, ...)
and against the offline server in ``planner.server``.

Example::

    planner = DexGraspVLAPlanner("http://127.0.0.1:8001/v1", episode_dir="logs/ep_000")
    instruction = planner.propose_instruction("clear the table", initial_bgr, current_bgr)
    box = planner.predict_bbox(instruction.instruction, current_bgr).bbox
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Callable, Optional, TypeVar, Union
from urllib.parse import urlparse

import numpy as np
import openai

from planner import prompts
from planner.images import check_bgr_image, to_data_url
from planner.logger import PlannerLogger
from planner.parsing import (
    ReplyParseError,
    extract_json,
    extract_object,
    parse_box,
    parse_verdict,
    string_field,
    string_list,
)
from planner.types import (
    BBox,
    BBoxFormat,
    BoxPrediction,
    CompletionCheck,
    GraspVerification,
    Instruction,
    PlannerError,
    PromptUnderstanding,
)

API_KEY_ENV_VARS = ("DEXGRASPVLA_PLANNER_API_KEY", "OPENAI_API_KEY")
"""Environment variables searched, in order, for the API key."""

T = TypeVar("T")

_TRANSIENT = (
    openai.APITimeoutError,
    openai.APIConnectionError,
    openai.InternalServerError,
    openai.RateLimitError,
)


def resolve_api_key(api_key: Optional[str] = None) -> str:
    """Return the explicit key, else the first set variable of ``API_KEY_ENV_VARS``, else ``"EMPTY"``.

    ``"EMPTY"`` is what local servers (vLLM, the offline planner) expect when no key is set.
    """
    if api_key:
        return api_key
    for name in API_KEY_ENV_VARS:
        value = os.environ.get(name)
        if value:
            return value
    return "EMPTY"


def _normalise_base_url(base_url: str) -> str:
    url = base_url.rstrip("/")
    if urlparse(url).path in ("", "/"):
        url += "/v1"
    return url


class DexGraspVLAPlanner:
    """High-level planner client (one method per task, each returning a typed result).

    Args:
        base_url: OpenAI-compatible endpoint, e.g. ``http://127.0.0.1:8001/v1`` (``/v1`` is
            appended when the URL has no path).
        model_name: model id; discovered from ``GET /v1/models`` (first entry) when ``None``.
        api_key: explicit key; by default read from ``DEXGRASPVLA_PLANNER_API_KEY`` then
            ``OPENAI_API_KEY``. Never store keys in committed files.
        timeout: per-request timeout in seconds.
        max_retries: extra attempts after a transient failure (timeout, connection error,
            HTTP 5xx or 429), with exponential backoff.
        bbox_format: the box convention of the model (``absolute`` pixels for Qwen2.5-VL,
            ``normalized_1000`` for Qwen-VL).
        backoff_s: first backoff delay; doubles per retry up to ``max_backoff_s``.
        parse_retries: how many times a reply that cannot be parsed is asked for again.
        image_format: ``png`` (lossless, default) or ``jpeg`` for the data URLs.
        max_tokens: completion token limit per request.
        temperature: sampling temperature sent with each request.
        episode_dir: if given, log requests there (see ``set_episode_dir``).
    """

    def __init__(
        self,
        base_url: str = "http://127.0.0.1:8001/v1",
        model_name: Optional[str] = None,
        api_key: Optional[str] = None,
        timeout: float = 60.0,
        max_retries: int = 3,
        bbox_format: Union[BBoxFormat, str] = BBoxFormat.ABSOLUTE,
        backoff_s: float = 1.0,
        max_backoff_s: float = 10.0,
        parse_retries: int = 1,
        image_format: str = "png",
        max_tokens: int = 512,
        temperature: float = 0.0,
        episode_dir: Optional[Union[str, Path]] = None,
    ):
        if max_retries < 0 or parse_retries < 0:
            raise ValueError("max_retries and parse_retries must be >= 0")
        self.base_url = _normalise_base_url(base_url)
        self.bbox_format = BBoxFormat(bbox_format)
        self.timeout = float(timeout)
        self.max_retries = int(max_retries)
        self.backoff_s = float(backoff_s)
        self.max_backoff_s = float(max_backoff_s)
        self.parse_retries = int(parse_retries)
        self.image_format = image_format
        self.max_tokens = int(max_tokens)
        self.temperature = float(temperature)
        self._client = openai.OpenAI(
            api_key=resolve_api_key(api_key),
            base_url=self.base_url,
            timeout=self.timeout,
            max_retries=0,  # retries are ours, so that they are logged and bounded
        )
        self._model = model_name
        self.logger: Optional[PlannerLogger] = None
        if episode_dir is not None:
            self.set_episode_dir(episode_dir)

    # ------------------------------------------------------------------ set-up
    def set_episode_dir(self, episode_dir: Optional[Union[str, Path]]) -> Optional[PlannerLogger]:
        """Start logging into ``episode_dir`` (``None`` stops logging); returns the logger."""
        self.logger = PlannerLogger(episode_dir) if episode_dir is not None else None
        return self.logger

    @property
    def model_name(self) -> str:
        """The model id, discovered from ``/v1/models`` on first use if not given."""
        if self._model is None:
            models = self._call_with_retries("list_models", lambda: self._client.models.list())[0]
            data = list(getattr(models, "data", []) or [])
            if not data:
                raise PlannerError(f"the server at {self.base_url} lists no models")
            self._model = str(data[0].id)
        return self._model

    def close(self) -> None:
        """Close the underlying HTTP client."""
        self._client.close()

    def __enter__(self) -> "DexGraspVLAPlanner":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # ------------------------------------------------------------------ tasks
    def understand_prompt(self, user_prompt: str, initial_head: Optional[np.ndarray] = None) -> PromptUnderstanding:
        """Which objects the user prompt asks for (optionally looking at the table image)."""

        def parse(reply: str) -> PromptUnderstanding:
            obj = extract_object(reply)
            if "targets" not in obj and "all_objects" not in obj:
                raise ReplyParseError("the reply's JSON lacks 'targets' and 'all_objects'")
            all_objects = False
            if "all_objects" in obj:
                all_objects, _ = parse_verdict(reply, "all_objects")
            return PromptUnderstanding(
                targets=string_list(obj, "targets"),
                all_objects=all_objects,
                reasoning=string_field(obj, "reasoning", required=False),
                raw=reply,
            )

        return self._run(prompts.understand_prompt(user_prompt, initial_head), parse)

    def propose_instruction(
        self, user_prompt: str, initial_head: np.ndarray, current_head: np.ndarray
    ) -> Instruction:
        """One sentence naming the next object to grasp (colour, shape, position)."""

        def parse(reply: str) -> Instruction:
            try:
                value = extract_json(reply)
            except ReplyParseError:
                value = None
            if value is None:
                # A plain sentence is also a valid answer from a chatty VLM.
                text = (reply or "").strip().strip('"').strip()
                if not text or len(text) > 400 or "{" in text:
                    raise ReplyParseError("expected JSON with 'instruction' or one plain sentence")
                return Instruction(instruction=text, raw=reply)
            obj = extract_object(reply, required=("instruction",))
            return Instruction(
                instruction=string_field(obj, "instruction"),
                target=string_field(obj, "target", required=False) or None,
                reasoning=string_field(obj, "reasoning", required=False),
                raw=reply,
            )

        return self._run(prompts.propose_instruction(user_prompt, initial_head, current_head), parse)

    def predict_bbox(self, instruction: str, current_head: np.ndarray) -> BoxPrediction:
        """The box (absolute pixels, clamped) of the object the instruction names."""
        height, width = check_bgr_image(current_head, "current_head").shape[:2]

        def parse(reply: str) -> BoxPrediction:
            obj = extract_object(reply, required=("bbox_2d",))
            bbox, raw_box = parse_box(obj["bbox_2d"], self.bbox_format, width, height)
            return BoxPrediction(
                bbox=bbox,
                label=string_field(obj, "label", required=False),
                description=string_field(obj, "description", required=False),
                raw_bbox=raw_box,
                raw=reply,
            )

        return self._run(prompts.predict_bbox(instruction, current_head, self.bbox_format), parse)

    def verify_grasp(
        self,
        instruction: str,
        current_head: np.ndarray,
        current_wrist: np.ndarray,
        target_bbox: Optional[BBox] = None,
    ) -> GraspVerification:
        """Whether the hand holds the target (head + wrist images; optional pre-grasp box)."""

        def parse(reply: str) -> GraspVerification:
            success, obj = parse_verdict(reply, "success")
            return GraspVerification(success, string_field(obj, "reasoning", required=False), raw=reply)

        return self._run(prompts.verify_grasp(instruction, current_head, current_wrist, target_bbox), parse)

    def check_completion(
        self, user_prompt: str, initial_head: np.ndarray, current_head: np.ndarray
    ) -> CompletionCheck:
        """Whether the user prompt is fully carried out (initial vs current head image)."""

        def parse(reply: str) -> CompletionCheck:
            done, obj = parse_verdict(reply, "done")
            return CompletionCheck(
                done=done,
                reasoning=string_field(obj, "reasoning", required=False),
                remaining=string_list(obj, "remaining") if obj else [],
                raw=reply,
            )

        return self._run(prompts.check_completion(user_prompt, initial_head, current_head), parse)

    # ------------------------------------------------------------------ machinery
    def _build_messages(self, prompt: prompts.Prompt, image_names: list[str]) -> tuple[list, list]:
        """Return (messages for the API, messages for the log with image file names)."""
        parts, log_parts = [], []
        names = iter(image_names)
        for part in prompt.parts:
            if isinstance(part, prompts.ImagePart):
                image = check_bgr_image(part.image, part.role)
                parts.append({"type": "image_url", "image_url": {"url": to_data_url(image, self.image_format)}})
                log_parts.append({"type": "image_url", "image_url": {"url": next(names, f"<{part.role}>")}})
            else:
                parts.append({"type": "text", "text": part})
                log_parts.append({"type": "text", "text": part})
        system = {"role": "system", "content": [{"type": "text", "text": prompt.system}]}
        return (
            [system, {"role": "user", "content": parts}],
            [system, {"role": "user", "content": log_parts}],
        )

    def _sleep_backoff(self, retry_index: int) -> None:
        time.sleep(min(self.max_backoff_s, self.backoff_s * (2 ** retry_index)))

    def _call_with_retries(self, task: str, call: Callable[[], T]) -> tuple[T, int]:
        """Run ``call``; retry transient failures with backoff. Returns (result, attempts)."""
        attempts = 0
        while True:
            attempts += 1
            try:
                return call(), attempts
            except _TRANSIENT as exc:
                if attempts > self.max_retries:
                    raise PlannerError(
                        f"request failed after {attempts} attempt(s) ({type(exc).__name__}: {exc})", task=task
                    ) from exc
                self._sleep_backoff(attempts - 1)
            except openai.APIStatusError as exc:
                raise PlannerError(f"server rejected the request: HTTP {exc.status_code}: {exc}", task=task) from exc
            except openai.OpenAIError as exc:
                raise PlannerError(f"request failed: {type(exc).__name__}: {exc}", task=task) from exc

    def _run(self, prompt: prompts.Prompt, parse: Callable[[str], T]) -> T:
        task = prompt.task.value
        index = self.logger.next_request_index() if self.logger else 0
        image_names: list[str] = []
        if self.logger:
            for part in prompt.images:
                image_names.append(self.logger.save_image(index, task, part.role, part.image))
        messages, log_messages = self._build_messages(prompt, image_names)
        start = time.monotonic()
        total_attempts, reply, result, error = 0, None, None, None
        try:
            model = self.model_name
            for parse_try in range(self.parse_retries + 1):
                completion, attempts = self._call_with_retries(
                    task,
                    lambda: self._client.chat.completions.create(
                        model=model,
                        messages=messages,
                        max_tokens=self.max_tokens,
                        temperature=self.temperature,
                    ),
                )
                total_attempts += attempts
                choices = getattr(completion, "choices", None) or []
                reply = choices[0].message.content if choices and choices[0].message else None
                reply = reply if isinstance(reply, str) else ""
                try:
                    result = parse(reply)
                    return result
                except ReplyParseError as exc:
                    if parse_try >= self.parse_retries:
                        raise PlannerError(
                            f"unusable reply after {parse_try + 1} answer(s): {exc}", task=task, reply=reply
                        ) from exc
        except PlannerError as exc:
            error = str(exc)
            raise
        finally:
            if self.logger:
                self.logger.write(
                    index,
                    task,
                    log_messages,
                    reply,
                    result,
                    time.monotonic() - start,
                    total_attempts,
                    error=error,
                    extra={"model": self._model, "base_url": self.base_url},
                )
        raise AssertionError("unreachable")  # pragma: no cover
