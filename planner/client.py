"""The DexGraspVLA planner client: one method per task, the same on every backend.

The task methods, their prompts (``planner.prompts``), the reply parsers (``planner.parsing``),
the retry policy, the deadlines and the episode log live here; a *transport* only sends one
set of chat messages and returns the reply text (``planner.backends``):

* ``backend: http`` (default): any OpenAI-compatible server (vLLM serving Qwen2.5-VL,
  DashScope, the offline ``planner.server``), ``planner.backends.http_backend.HTTPTransport``;
* ``backend: transformers``: Qwen2-VL / Qwen2.5-VL from a local folder, run in this process,
  ``planner.backends.transformers_backend.TransformersTransport``.

Example::

    planner = DexGraspVLAPlanner("http://127.0.0.1:8001/v1", episode_dir="logs/ep_000")
    instruction = planner.propose_instruction("clear the table", initial_bgr, current_bgr)
    box = planner.predict_bbox(instruction.instruction, current_bgr).bbox

    local = DexGraspVLAPlanner.from_config({"backend": "transformers", "model_path": "/models/Qwen2.5-VL-7B-Instruct"})

Deadlines
---------
``timeout`` is ONE deadline per attempt. Over HTTP: connecting, sending the request, receiving
the headers and the whole body must all finish within it, however slowly the server trickles
its bytes (see ``planner.backends.http_backend`` for how). For a local model: generation stops
at the deadline (checked after every new token). ``total_timeout`` is one deadline per call
(one task, or the model discovery) across all attempts and backoff sleeps. When an attempt's
deadline passes, the attempt counts as a timeout (retried over HTTP if the call's deadline
leaves time).

Failures and retries
--------------------
Every transport or reply failure raises ``PlannerError`` (``planner.types``); the client sets
these attributes on it:

* ``kind``: ``"timeout"``, ``"connection"``, ``"http_status"``, ``"bad_body"`` (not JSON,
  empty, truncated, not a chat completion, too large), ``"bad_reply"`` (the model's text could
  not be parsed), or ``"deadline"`` (the call's overall deadline stopped the retries). The local
  backend adds ``"load"`` (the model folder could not be loaded), ``"bad_input"`` (the processor
  refused the prompt or an image), ``"out_of_memory"``, ``"generation"`` (any other error in
  ``generate``) and ``"empty_output"`` (the model produced no text);
* ``status``: the HTTP status, or ``None`` when no response arrived (always for local models);
* ``body_head``: ``repr`` of the first 200 characters of the body (``None`` without a body);
* ``attempts``: how many requests the call made (the first try is attempt 1);
* ``retryable``: whether the last failure was of a retryable kind.

Retried (with exponential backoff; ``Retry-After`` is honoured up to ``max_backoff_s``), up to
``max_retries`` times: connection errors, timeouts, HTTP 5xx, 408 and 429, and bodies that are
not a JSON chat completion. Other 4xx statuses are not retried, nor are local-model failures
(load, bad input, out of memory, generation errors, timeouts: the same input would fail the
same way). Replies whose text cannot be parsed (no JSON, no verdict, a bad box) and empty
local outputs are asked for again, without backoff, up to ``parse_retries`` times, at
``retry_temperature`` when set (with greedy decoding the same prompt gives the same reply, so
a retry only helps when it samples). ``last_attempts`` and the episode log's ``attempts`` give
the count.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence, TypeVar, Union

import numpy as np

from planner import prompts
from planner.backends.base import PARSE_FAILURE_KINDS, ChatTransport, Completion, TransportFailure
from planner.backends.http_backend import (  # noqa: F401  (re-exported: planner.client was their home)
    API_KEY_ENV_VARS,
    BODY_HEAD_CHARS,
    DEFAULT_MAX_RESPONSE_BYTES,
    HTTPTransport,
    resolve_api_key,
)
from planner.images import check_bgr_image
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
    FailedTarget,
    GraspVerification,
    Instruction,
    PlannerError,
    PromptUnderstanding,
)

BACKENDS = ("http", "transformers")
"""Values of the ``backend`` config key."""

T = TypeVar("T")

_log = logging.getLogger(__name__)


@dataclass
class _Attempts:
    """Attempt count and last reply text of one call (kept even when the call fails)."""

    count: int = 0
    reply: Optional[str] = None


class DexGraspVLAPlanner:
    """High-level planner client (one method per task, each returning a typed result).

    Args:
        base_url: OpenAI-compatible endpoint, e.g. ``http://127.0.0.1:8001/v1`` (``/v1`` is
            appended when the URL has no path). HTTP backend only.
        model_name: model id; discovered from ``GET /v1/models`` (first entry) when ``None``.
            HTTP backend only.
        api_key: explicit key for programmatic use; by default the key is read from the
            environment (see ``api_key_env``). Never store keys in committed files. HTTP only.
        timeout: the deadline of one attempt, in seconds (HTTP: connect, send, headers and the
            whole body, however the server trickles them; local model: the whole generation).
        max_retries: extra attempts after a retryable failure (timeout, connection error,
            HTTP 5xx/408/429, a body that is not a JSON chat completion), with backoff.
        bbox_format: the box convention of the model (``absolute`` pixels for Qwen2.5-VL,
            ``normalized_1000`` for Qwen-VL and Qwen2-VL).
        backoff_s: first backoff delay; doubles per retry up to ``max_backoff_s``.
        max_backoff_s: longest backoff delay (also caps a server's ``Retry-After``).
        parse_retries: how many times a reply that cannot be parsed is asked for again.
        image_format: ``png`` (lossless, default) or ``jpeg`` for the data URLs (HTTP only).
        max_tokens: completion token limit per request (``max_new_tokens`` of a local model).
        temperature: sampling temperature of each request (0: greedy).
        episode_dir: if given, log requests there (see ``set_episode_dir``).
        total_timeout: the deadline of one call (a task, or the model discovery) across all
            attempts and backoff sleeps, in seconds. ``None`` means the natural bound
            ``timeout * (max_retries + parse_retries + 1) + max_backoff_s * (max_retries + parse_retries)``.
        api_key_env: NAME of an extra environment variable to read the key from, searched
            before ``DEXGRASPVLA_PLANNER_API_KEY`` and ``OPENAI_API_KEY``. HTTP only.
        max_response_bytes: larger reply bodies are refused (``bad_body``). HTTP only.
        transport: the backend (a ``planner.backends.ChatTransport``). When given, the HTTP-only
            arguments above are not used; by default an ``HTTPTransport`` is built from them.
        retry_temperature: temperature of the requests that re-ask after an unparsable reply;
            ``None`` keeps ``temperature``.
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
        *,
        total_timeout: Optional[float] = None,
        api_key_env: Optional[str] = None,
        max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
        transport: Optional[ChatTransport] = None,
        retry_temperature: Optional[float] = None,
    ):
        if max_retries < 0 or parse_retries < 0:
            raise ValueError("max_retries and parse_retries must be >= 0")
        for name, value in (("timeout", timeout), ("total_timeout", total_timeout)):
            if value is not None and not (math.isfinite(float(value)) and float(value) > 0):
                raise ValueError(f"{name} must be a positive number of seconds, got {value!r}")
        if backoff_s < 0 or max_backoff_s < 0:
            raise ValueError("backoff_s and max_backoff_s must be >= 0")
        for name, value in (("temperature", temperature), ("retry_temperature", retry_temperature)):
            if value is not None and not (math.isfinite(float(value)) and float(value) >= 0):
                raise ValueError(f"{name} must be a number >= 0, got {value!r}")
        if int(max_tokens) < 1:
            raise ValueError(f"max_tokens must be >= 1, got {max_tokens!r}")
        if transport is None:
            transport = HTTPTransport(
                base_url, model_name, api_key=api_key, api_key_env=api_key_env, image_format=image_format,
                max_response_bytes=max_response_bytes,
            )
        self.transport: ChatTransport = transport
        self.bbox_format = BBoxFormat(bbox_format)
        self.timeout = float(timeout)
        self.max_retries = int(max_retries)
        self.backoff_s = float(backoff_s)
        self.max_backoff_s = float(max_backoff_s)
        self.parse_retries = int(parse_retries)
        retries = self.max_retries + self.parse_retries
        self.total_timeout = (
            float(total_timeout) if total_timeout is not None
            else self.timeout * (retries + 1) + self.max_backoff_s * retries
        )
        self.image_format = image_format
        self.max_tokens = int(max_tokens)
        self.temperature = float(temperature)
        self.retry_temperature = None if retry_temperature is None else float(retry_temperature)
        self.last_attempts = 0
        """Requests made by the last task call (1 when the first try succeeded)."""
        self.logger: Optional[PlannerLogger] = None
        if episode_dir is not None:
            self.set_episode_dir(episode_dir)

    @classmethod
    def from_config(
        cls, cfg: Mapping[str, Any], episode_dir: Optional[Union[str, Path]] = None
    ) -> "DexGraspVLAPlanner":
        """Build a planner from the ``planner`` config section (``inference_utils/config/planner/*.yaml``).

        ``backend`` chooses the transport: ``http`` (default) or ``transformers``.

        Keys of every backend: ``timeout_s`` (per attempt), ``total_timeout_s`` (per call),
        ``max_retries``, ``parse_retries``, ``backoff_s``, ``max_backoff_s``, ``bbox_format``,
        ``max_tokens`` (alias ``max_new_tokens``), ``temperature``, ``retry_temperature``.

        ``http``: ``base_url``, ``model_name``, ``api_key_env``, ``max_response_bytes``. A
        literal ``api_key`` is refused: keys come only from the environment (``api_key_env``
        names the variable).

        ``transformers``: ``model_path``, ``device``, ``dtype``, ``min_pixels``, ``max_pixels``,
        ``attn_implementation``, ``model_name`` (see ``TransformersTransport.from_config``).
        Nothing is loaded here; the weights load on first use or ``warm_up()``.
        """
        if cfg.get("api_key"):
            raise ValueError(
                "planner.api_key: API keys are not read from config files or the command line; export "
                "the key in the environment variable named by planner.api_key_env "
                f"(default {API_KEY_ENV_VARS[0]})"
            )
        backend = str(cfg.get("backend") or "http").strip().lower()
        if backend not in BACKENDS:
            raise ValueError(f"planner.backend: expected one of {', '.join(BACKENDS)}, got {cfg.get('backend')!r}")
        max_tokens = cfg.get("max_new_tokens") if cfg.get("max_new_tokens") is not None else cfg.get("max_tokens")
        kwargs: dict[str, Any] = {
            "timeout": float(cfg.get("timeout_s", 60.0)),
            "max_retries": int(cfg.get("max_retries", 3)),
            "parse_retries": int(cfg.get("parse_retries", 1)),
            "backoff_s": float(cfg.get("backoff_s", 1.0)),
            "max_backoff_s": float(cfg.get("max_backoff_s", 10.0)),
            "bbox_format": str(cfg.get("bbox_format", "absolute")),
            "max_tokens": int(max_tokens if max_tokens is not None else 512),
            "temperature": float(cfg.get("temperature", 0.0) or 0.0),
            "retry_temperature": None if cfg.get("retry_temperature") is None else float(cfg["retry_temperature"]),
            "episode_dir": episode_dir,
        }
        if cfg.get("total_timeout_s") is not None:
            kwargs["total_timeout"] = float(cfg["total_timeout_s"])
        if backend == "transformers":
            from planner.backends.transformers_backend import TransformersTransport  # noqa: PLC0415 (torch)

            kwargs["transport"] = TransformersTransport.from_config(cfg)
        else:
            kwargs.update(
                base_url=str(cfg["base_url"]),
                model_name=cfg.get("model_name"),
                api_key_env=cfg.get("api_key_env"),
                max_response_bytes=int(cfg.get("max_response_bytes", DEFAULT_MAX_RESPONSE_BYTES)),
            )
        return cls(**kwargs)

    # ------------------------------------------------------------------ set-up
    def set_episode_dir(self, episode_dir: Optional[Union[str, Path]]) -> Optional[PlannerLogger]:
        """Start logging into ``episode_dir`` (``None`` stops logging); returns the logger."""
        self.logger = PlannerLogger(episode_dir) if episode_dir is not None else None
        return self.logger

    @property
    def backend(self) -> str:
        """The transport's name: ``http`` or ``transformers``."""
        return self.transport.name

    @property
    def base_url(self) -> Optional[str]:
        """The HTTP endpoint (``None`` for a local model)."""
        return getattr(self.transport, "base_url", None)

    @property
    def _model(self) -> Optional[str]:
        """The model id if known (kept for callers that set it directly)."""
        return self.transport.model

    @_model.setter
    def _model(self, value: Optional[str]) -> None:
        self.transport.model = value

    @property
    def model_name(self) -> str:
        """The model id (over HTTP discovered from ``/v1/models`` on first use if not given)."""
        return self._discover_model(None, time.monotonic() + self.total_timeout, _Attempts())

    def warm_up(self) -> str:
        """Resolve the model id and get the backend ready (the local backend loads its weights), so
        that an unusable planner fails before the robot moves. Returns the model id; raises
        ``PlannerError`` (e.g. ``kind="load"``) otherwise. Loading is not bounded by ``timeout``."""
        model = self._discover_model(None, time.monotonic() + self.total_timeout, _Attempts())
        try:
            self.transport.warm_up(time.monotonic() + self.total_timeout)
        except TransportFailure as failure:
            raise self._give_up(None, "preparing the model", failure, _Attempts(1), "not_retryable") from None
        return model

    def close(self) -> None:
        """Release the transport's resources (pooled HTTP connections)."""
        self.transport.close()

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
        self, user_prompt: str, initial_head: np.ndarray, current_head: np.ndarray,
        avoid: Sequence[FailedTarget] = (),
    ) -> Instruction:
        """One sentence naming the next object to grasp (colour, shape, position), avoiding the
        objects in ``avoid`` (earlier failed attempts) while the prompt allows another one."""

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

        return self._run(prompts.propose_instruction(user_prompt, initial_head, current_head, avoid), parse)

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

    # ------------------------------------------------------------------ messages
    def _build_messages(self, prompt: prompts.Prompt, image_names: list[str]) -> tuple[list, list]:
        """Return (messages for the transport, messages for the log with image file names)."""
        parts, log_parts = [], []
        names = iter(image_names)
        for part in prompt.parts:
            if isinstance(part, prompts.ImagePart):
                image = check_bgr_image(part.image, part.role)
                parts.append(self.transport.image_part(image))
                log_parts.append({"type": "image_url", "image_url": {"url": next(names, f"<{part.role}>")}})
            else:
                parts.append({"type": "text", "text": part})
                log_parts.append({"type": "text", "text": part})
        system = {"role": "system", "content": [{"type": "text", "text": prompt.system}]}
        return (
            [system, {"role": "user", "content": parts}],
            [system, {"role": "user", "content": log_parts}],
        )

    # ------------------------------------------------------------------ retries
    def _backoff(self, retry_number: int, retry_after: Optional[float]) -> float:
        """Delay before retry ``retry_number`` (1-based): exponential, at least ``Retry-After``, capped."""
        delay = self.backoff_s * (2 ** (retry_number - 1))
        if retry_after is not None:
            delay = max(delay, retry_after)
        return min(self.max_backoff_s, delay)

    def _with_retries(
        self,
        task: Optional[str],
        what: str,
        attempt: Callable[[float, int], T],
        deadline: float,
        attempts: _Attempts,
    ) -> T:
        """Call ``attempt(attempt_deadline, parse_failures_so_far)`` until it returns, per the retry
        policy; count attempts.

        ``attempt`` makes one request and returns the result or raises ``TransportFailure``.
        Raises ``PlannerError`` (with ``kind``, ``status``, ``body_head``, ``attempts``, ``retryable``).
        """
        transport_failures = parse_failures = 0
        last: Optional[TransportFailure] = None
        while True:
            now = time.monotonic()
            if now >= deadline:
                raise self._give_up(task, what, last, attempts, "deadline")
            attempts.count += 1
            try:
                result = attempt(min(deadline, now + self.timeout), parse_failures)
                if attempts.count > 1:
                    _log.info("planner %s%s succeeded on attempt %d", what, f" [{task}]" if task else "", attempts.count)
                return result
            except TransportFailure as failure:
                last = failure
                if failure.kind in PARSE_FAILURE_KINDS:
                    parse_failures += 1
                    if parse_failures > self.parse_retries:
                        raise self._give_up(task, what, failure, attempts, "parse_retries") from None
                    delay = 0.0
                else:
                    transport_failures += 1
                    if not failure.retryable:
                        raise self._give_up(task, what, failure, attempts, "not_retryable") from None
                    if transport_failures > self.max_retries:
                        raise self._give_up(task, what, failure, attempts, "max_retries") from None
                    delay = self._backoff(transport_failures, failure.retry_after)
                if time.monotonic() + delay >= deadline:
                    raise self._give_up(task, what, failure, attempts, "deadline") from None
                _log.warning(
                    "planner %s%s: attempt %d failed (%s); retrying in %.2f s",
                    what, f" [{task}]" if task else "", attempts.count, failure, delay,
                )
                if delay > 0:
                    time.sleep(delay)

    def _give_up(
        self, task: Optional[str], what: str, failure: Optional[TransportFailure], attempts: _Attempts, reason: str
    ) -> PlannerError:
        """The ``PlannerError`` for a call that stops retrying (``reason`` says why)."""
        n = attempts.count
        if failure is None:
            message = f"{what}: the call's {self.total_timeout:g} s deadline passed before a request was sent"
        elif failure.kind in PARSE_FAILURE_KINDS:
            message = f"unusable reply after {n} attempt(s): {failure.detail}"
        else:
            message = f"{what} failed after {n} attempt(s): {failure}"
        if failure is not None and reason == "deadline":
            message += f"; stopped: the call's overall deadline of {self.total_timeout:g} s was reached"
        elif reason == "not_retryable" and failure is not None:
            message += f"; not retried ({failure.no_retry_note})"
        error = PlannerError(message, task=task, reply=failure.reply if failure is not None else None)
        error.kind = "deadline" if reason == "deadline" else (failure.kind if failure else "deadline")
        error.status = failure.status if failure else None
        error.body_head = failure.body_head if failure else None
        error.attempts = n
        error.retryable = bool(failure.retryable) if failure else True
        _log.info("planner %s%s gave up after %d attempt(s)", what, f" [{task}]" if task else "", n)
        return error

    def _discover_model(self, task: Optional[str], deadline: float, attempts: _Attempts) -> str:
        """The model id: the configured or known one, else the transport discovers it (HTTP: ``GET /models``)."""
        if self.transport.model is not None:
            return self.transport.model

        def attempt(attempt_deadline: float, parse_failures: int) -> str:
            return self.transport.discover_model(attempt_deadline)

        self.transport.model = self._with_retries(task, "listing models", attempt, deadline, attempts)
        return self.transport.model

    def _run(self, prompt: prompts.Prompt, parse: Callable[[str], T]) -> T:
        """Send one task prompt and parse the reply, with retries, deadlines and logging."""
        task = prompt.task.value
        index = self.logger.next_request_index() if self.logger else 0
        image_names: list[str] = []
        if self.logger:
            for part in prompt.images:
                image_names.append(self.logger.save_image(index, task, part.role, part.image))
        messages, log_messages = self._build_messages(prompt, image_names)
        start = time.monotonic()
        deadline = start + self.total_timeout
        chat, discovery = _Attempts(), _Attempts()
        result: Optional[T] = None
        error: Optional[str] = None
        usage: dict[str, Any] = {}

        def attempt(attempt_deadline: float, parse_failures: int) -> T:
            temperature = self.temperature
            if parse_failures and self.retry_temperature is not None:
                temperature = self.retry_temperature
            try:
                reply: Completion = self.transport.complete(
                    messages, model=model, max_tokens=self.max_tokens, temperature=temperature,
                    deadline=attempt_deadline,
                )
            except TransportFailure as failure:
                if failure.reply is not None:
                    chat.reply = failure.reply
                raise
            chat.reply = reply.text
            usage.clear()
            usage.update(reply.usage)
            try:
                return parse(reply.text)
            except ReplyParseError as exc:
                raise TransportFailure("bad_reply", str(exc), reply.status, reply.body_head, reply=reply.text) from None

        try:
            model = self._discover_model(task, deadline, discovery)
            result = self._with_retries(task, self.transport.request_name, attempt, deadline, chat)
            return result
        except PlannerError as exc:
            error = str(exc)
            raise
        finally:
            self.last_attempts = chat.count
            if self.logger:
                extra: dict[str, Any] = {"model": self.transport.model, **self.transport.log_info()}
                if discovery.count:
                    extra["model_discovery_attempts"] = discovery.count
                if usage:
                    extra["usage"] = dict(usage)
                self.logger.write(
                    index,
                    task,
                    log_messages,
                    chat.reply,
                    result,
                    time.monotonic() - start,
                    chat.count,
                    error=error,
                    extra=extra,
                )
