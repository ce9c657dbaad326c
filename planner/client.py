"""The DexGraspVLA planner client: an OpenAI-compatible chat client, one method per task.

Works against any OpenAI-compatible VLM server (vLLM serving Qwen2.5-VL, DashScope, ...)
and against the offline server in ``planner.server``.

Example::

    planner = DexGraspVLAPlanner("http://127.0.0.1:8001/v1", episode_dir="logs/ep_000")
    instruction = planner.propose_instruction("clear the table", initial_bgr, current_bgr)
    box = planner.predict_bbox(instruction.instruction, current_bgr).bbox

Deadlines
---------
``timeout`` is ONE deadline per attempt: connecting, sending the request, receiving the
headers and the whole body must all finish within it, however slowly the server trickles its
bytes. ``total_timeout`` is one deadline per call (one task, or the model discovery) across all
attempts and backoff sleeps. When an attempt's deadline passes, its connection is closed at
once and the attempt counts as a timeout (retried if the call's deadline leaves time).

Why not the ``openai`` SDK: its ``timeout`` is httpx's timeout, which bounds each socket
operation separately, so a server sending one byte per second never trips it (a 5 s timeout
took 28 s). The client therefore speaks HTTP through ``httpcore`` (the engine under httpx and
the SDK) with a small network backend, ``_DeadlineBackend``, that gives every socket operation
(connect, TLS handshake, each send, each receive) ``min(its own timeout, time left before the
attempt's deadline)`` and fails the operation once the deadline has passed. That bounds the
header phase as well as the body, with no watchdog thread; the only remaining overshoot is
the scheduler's latency. (Name resolution, ``getaddrinfo``, cannot be interrupted; use an IP
address in ``base_url`` where that matters.) ``HTTP(S)_PROXY``/``NO_PROXY`` are honoured for
http(s) proxies, loopback hosts are never proxied.

Failures and retries
--------------------
Every transport or reply failure raises ``PlannerError`` (``planner.types``); the client sets
these attributes on it:

* ``kind``: ``"timeout"``, ``"connection"``, ``"http_status"``, ``"bad_body"`` (not JSON,
  empty, truncated, not a chat completion, too large), ``"bad_reply"`` (the model's text could
  not be parsed), or ``"deadline"`` (the call's overall deadline stopped the retries);
* ``status``: the HTTP status, or ``None`` when no response arrived;
* ``body_head``: ``repr`` of the first 200 characters of the body (``None`` without a body);
* ``attempts``: how many HTTP requests the call made (the first try is attempt 1);
* ``retryable``: whether the last failure was of a retryable kind.

Retried (with exponential backoff; ``Retry-After`` is honoured up to ``max_backoff_s``), up to
``max_retries`` times: connection errors, timeouts, HTTP 5xx, 408 and 429, and bodies that are
not a JSON chat completion. Other 4xx statuses are not retried. Replies whose text cannot be
parsed (no JSON, no verdict, a bad box) are asked for again, without backoff, up to
``parse_retries`` times. ``last_attempts`` and the episode log's ``attempts`` give the count.
"""

from __future__ import annotations

import contextvars
import json
import logging
import math
import os
import re
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Optional, TypeVar, Union
from urllib.parse import unquote, urlparse

import httpcore
import httpx
import numpy as np

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

BODY_HEAD_CHARS = 200
"""How many characters of a bad body are quoted in errors and logs."""

DEFAULT_MAX_RESPONSE_BYTES = 8 * 1024 * 1024
"""Replies larger than this are refused (a chat completion is a few kB)."""

T = TypeVar("T")

_log = logging.getLogger(__name__)
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_LOOPBACK_HOSTS = {"localhost", "127.0.0.1", "::1"}


def resolve_api_key(api_key: Optional[str] = None, env_var: Optional[str] = None) -> str:
    """Return the API key: ``api_key`` if given, else the environment.

    The environment is searched in order: the variable named ``env_var`` (when given), then
    ``API_KEY_ENV_VARS``. Returns ``"EMPTY"`` when none is set, which is what local servers
    (vLLM, the offline planner) expect. Keys are never read from files.
    """
    if api_key:
        return api_key
    names = ((env_var,) if env_var else ()) + API_KEY_ENV_VARS
    for name in names:
        value = os.environ.get(name)
        if value:
            return value
    return "EMPTY"


def _check_env_name(name: Optional[str]) -> Optional[str]:
    """``name`` if it is a valid environment variable name; ``ValueError`` otherwise."""
    if name is None or name == "":
        return None
    if not isinstance(name, str) or not _ENV_NAME.match(name):
        raise ValueError(
            f"api_key_env must be the NAME of an environment variable holding the key (e.g. "
            f"DEXGRASPVLA_PLANNER_API_KEY), not {'the key itself' if isinstance(name, str) else repr(name)}"
        )
    return name


def _normalise_base_url(base_url: str) -> str:
    url = base_url.rstrip("/")
    parsed = urlparse(url)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise ValueError(f"base_url must be an http(s) URL, got {base_url!r}")
    if parsed.path in ("", "/"):
        url += "/v1"
    return url


def _retryable_status(status: int) -> bool:
    """HTTP statuses worth retrying: 408, 429 and every 5xx."""
    return status in (408, 429) or status >= 500


# ---------------------------------------------------------------------- deadline transport
_DEADLINE: contextvars.ContextVar[Optional[float]] = contextvars.ContextVar("planner_http_deadline", default=None)
"""``time.monotonic()`` deadline of the HTTP attempt running in this thread (``None``: none)."""


def _bounded(timeout: Optional[float], expired: type[Exception]) -> Optional[float]:
    """``timeout`` shortened to the time left before the current deadline; ``expired`` once it passed."""
    deadline = _DEADLINE.get()
    if deadline is None:
        return timeout
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise expired("the attempt's deadline has passed")
    return remaining if timeout is None else min(timeout, remaining)


class _DeadlineStream(httpcore.NetworkStream):
    """A network stream whose every operation ends by the current attempt's deadline."""

    def __init__(self, stream: httpcore.NetworkStream) -> None:
        self._stream = stream

    def read(self, max_bytes: int, timeout: Optional[float] = None) -> bytes:
        """Receive up to ``max_bytes``, waiting no longer than the deadline allows."""
        return self._stream.read(max_bytes, _bounded(timeout, httpcore.ReadTimeout))

    def write(self, buffer: bytes, timeout: Optional[float] = None) -> None:
        """Send ``buffer``, taking no longer than the deadline allows."""
        self._stream.write(buffer, _bounded(timeout, httpcore.WriteTimeout))

    def close(self) -> None:
        """Close the connection."""
        self._stream.close()

    def start_tls(
        self,
        ssl_context: Any,
        server_hostname: Optional[str] = None,
        timeout: Optional[float] = None,
    ) -> httpcore.NetworkStream:
        """TLS handshake, bounded by the deadline; the TLS stream is bounded too."""
        inner = self._stream.start_tls(ssl_context, server_hostname, _bounded(timeout, httpcore.ConnectTimeout))
        return _DeadlineStream(inner)

    def get_extra_info(self, info: str) -> Any:
        """Pass-through (socket, peer address, TLS object, ...)."""
        return self._stream.get_extra_info(info)


class _DeadlineBackend(httpcore.NetworkBackend):
    """httpcore network backend that bounds every socket operation by ``_DEADLINE``."""

    def __init__(self, inner: Optional[httpcore.NetworkBackend] = None) -> None:
        self._inner = inner or httpcore.SyncBackend()

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: Optional[float] = None,
        local_address: Optional[str] = None,
        socket_options: Optional[Iterable[Any]] = None,
    ) -> httpcore.NetworkStream:
        """Open a TCP connection within the deadline."""
        stream = self._inner.connect_tcp(
            host, port, _bounded(timeout, httpcore.ConnectTimeout), local_address=local_address,
            socket_options=socket_options,
        )
        return _DeadlineStream(stream)

    def connect_unix_socket(
        self, path: str, timeout: Optional[float] = None, socket_options: Optional[Iterable[Any]] = None
    ) -> httpcore.NetworkStream:
        """Open a Unix-socket connection within the deadline."""
        stream = self._inner.connect_unix_socket(
            path, _bounded(timeout, httpcore.ConnectTimeout), socket_options=socket_options
        )
        return _DeadlineStream(stream)

    def sleep(self, seconds: float) -> None:
        """Sleep (used by httpcore between connection retries, which are off here)."""
        self._inner.sleep(seconds)


def _make_pool(base_url: str) -> httpcore.ConnectionPool:
    """A connection pool (or HTTP proxy pool, per ``HTTP(S)_PROXY``/``NO_PROXY``) using the deadline backend."""
    parsed = urlparse(base_url)
    ssl_context = httpx.create_ssl_context() if parsed.scheme == "https" else None
    backend = _DeadlineBackend()
    host = (parsed.hostname or "").lower()
    proxies = urllib.request.getproxies_environment()
    proxy = proxies.get(parsed.scheme) or proxies.get("all")
    if proxy and host not in _LOOPBACK_HOSTS and not urllib.request.proxy_bypass_environment(host, proxies):
        purl = urlparse(proxy if "://" in proxy else "http://" + proxy)
        if purl.scheme not in ("http", "https"):
            raise ValueError(f"unsupported proxy {purl.scheme}://{purl.hostname} for the planner; use an http(s) proxy")
        auth = (unquote(purl.username), unquote(purl.password or "")) if purl.username else None
        netloc = purl.hostname + (f":{purl.port}" if purl.port else "")
        return httpcore.HTTPProxy(
            proxy_url=f"{purl.scheme}://{netloc}", proxy_auth=auth, ssl_context=ssl_context,
            network_backend=backend,
        )
    return httpcore.ConnectionPool(ssl_context=ssl_context, network_backend=backend)


# ---------------------------------------------------------------------- failures
class _Failure(Exception):
    """One failed attempt (internal; becomes a ``PlannerError`` when the call gives up)."""

    def __init__(
        self,
        kind: str,
        detail: str,
        status: Optional[int] = None,
        body_head: Optional[str] = None,
        retryable: bool = True,
        retry_after: Optional[float] = None,
        reply: Optional[str] = None,
    ) -> None:
        super().__init__(detail)
        self.kind = kind
        self.detail = detail
        self.status = status
        self.body_head = body_head
        self.retryable = retryable
        self.retry_after = retry_after
        self.reply = reply

    def __str__(self) -> str:
        parts = [self.detail]
        if self.status is not None:
            parts.append(f"HTTP {self.status}")
        if self.body_head is not None:
            parts.append(f"body starts {self.body_head}")
        return "; ".join(parts)


@dataclass
class _HTTPReply:
    """A complete HTTP response."""

    status: int
    content_type: str
    body: bytes
    retry_after: Optional[float]
    secret: str = field(default="", repr=False)

    def head(self) -> str:
        """``repr`` of the body's first ``BODY_HEAD_CHARS`` characters (an echoed API key is masked)."""
        cut = self.body[: BODY_HEAD_CHARS * 4]
        text = self._mask(cut.decode("utf-8", errors="replace"))
        truncated = len(text) > BODY_HEAD_CHARS or len(self.body) > len(cut)
        return repr(text[:BODY_HEAD_CHARS]) + ("..." if truncated else "")

    def fail(self, kind: str, detail: str, retryable: bool = True) -> _Failure:
        """A ``_Failure`` carrying this reply's status and body head."""
        return _Failure(kind, detail, self.status, self.head(), retryable=retryable, retry_after=self.retry_after)

    def json_object(self) -> dict[str, Any]:
        """The body as a JSON object; ``_Failure`` (``bad_body``) when it is anything else."""
        if not self.body.strip():
            raise self.fail("bad_body", "empty body")
        try:
            value = json.loads(self.body.decode("utf-8"))
        except UnicodeDecodeError:
            raise self.fail("bad_body", "body is not UTF-8 text") from None
        except ValueError as exc:
            raise self.fail("bad_body", f"body is not valid JSON ({exc}; content-type {self.content_type!r})") from None
        if not isinstance(value, dict):
            raise self.fail("bad_body", f"JSON body is a {type(value).__name__}, not an object")
        return value

    def error_message(self) -> str:
        """The ``error.message`` of an OpenAI-style error body, or ``""``."""
        try:
            value = json.loads(self.body.decode("utf-8"))
        except ValueError:
            return ""
        error = value.get("error") if isinstance(value, dict) else None
        message = error.get("message") if isinstance(error, dict) else error
        return self._mask(str(message)[:BODY_HEAD_CHARS]) if message else ""

    def _mask(self, text: str) -> str:
        return text.replace(self.secret, "***") if self.secret else text


def _retry_after(headers: Iterable[tuple[bytes, bytes]]) -> Optional[float]:
    for name, value in headers:
        if name.lower() == b"retry-after":
            try:
                seconds = float(value.decode("ascii").strip())
            except (UnicodeDecodeError, ValueError):
                return None  # an HTTP date: ignored, the normal backoff applies
            return seconds if math.isfinite(seconds) and seconds >= 0 else None
    return None


def _header(headers: Iterable[tuple[bytes, bytes]], wanted: bytes) -> str:
    for name, value in headers:
        if name.lower() == wanted:
            return value.decode("latin-1")
    return ""


def _completion_text(reply: _HTTPReply) -> str:
    """The assistant text of a chat-completion body; ``_Failure`` (``bad_body``) if it is not one."""
    obj = reply.json_object()
    choices = obj.get("choices")
    if not isinstance(choices, list) or not choices:
        what = "an error object" if "error" in obj else "not a chat completion (no 'choices')"
        raise reply.fail("bad_body", f"JSON body is {what}")
    message = choices[0].get("message") if isinstance(choices[0], dict) else None
    if not isinstance(message, dict):
        raise reply.fail("bad_body", "the chat completion's first choice has no 'message'")
    content = message.get("content")
    if isinstance(content, list):  # content parts, as some servers return them
        return "".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return content if isinstance(content, str) else ""


@dataclass
class _Attempts:
    """Attempt count and last reply text of one call (kept even when the call fails)."""

    count: int = 0
    reply: Optional[str] = None


class DexGraspVLAPlanner:
    """High-level planner client (one method per task, each returning a typed result).

    Args:
        base_url: OpenAI-compatible endpoint, e.g. ``http://127.0.0.1:8001/v1`` (``/v1`` is
            appended when the URL has no path).
        model_name: model id; discovered from ``GET /v1/models`` (first entry) when ``None``.
        api_key: explicit key for programmatic use; by default the key is read from the
            environment (see ``api_key_env``). Never store keys in committed files.
        timeout: the deadline of one attempt, in seconds: connect, send, headers and the whole
            body, however the server trickles them (see the module docstring).
        max_retries: extra attempts after a retryable failure (timeout, connection error,
            HTTP 5xx/408/429, a body that is not a JSON chat completion), with backoff.
        bbox_format: the box convention of the model (``absolute`` pixels for Qwen2.5-VL,
            ``normalized_1000`` for Qwen-VL).
        backoff_s: first backoff delay; doubles per retry up to ``max_backoff_s``.
        max_backoff_s: longest backoff delay (also caps a server's ``Retry-After``).
        parse_retries: how many times a reply that cannot be parsed is asked for again.
        image_format: ``png`` (lossless, default) or ``jpeg`` for the data URLs.
        max_tokens: completion token limit per request.
        temperature: sampling temperature sent with each request.
        episode_dir: if given, log requests there (see ``set_episode_dir``).
        total_timeout: the deadline of one call (a task, or the model discovery) across all
            attempts and backoff sleeps, in seconds. ``None`` means the natural bound
            ``timeout * (max_retries + parse_retries + 1) + max_backoff_s * (max_retries + parse_retries)``.
        api_key_env: NAME of an extra environment variable to read the key from, searched
            before ``DEXGRASPVLA_PLANNER_API_KEY`` and ``OPENAI_API_KEY``.
        max_response_bytes: larger reply bodies are refused (``bad_body``).
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
    ):
        if max_retries < 0 or parse_retries < 0:
            raise ValueError("max_retries and parse_retries must be >= 0")
        for name, value in (("timeout", timeout), ("total_timeout", total_timeout)):
            if value is not None and not (math.isfinite(float(value)) and float(value) > 0):
                raise ValueError(f"{name} must be a positive number of seconds, got {value!r}")
        if backoff_s < 0 or max_backoff_s < 0:
            raise ValueError("backoff_s and max_backoff_s must be >= 0")
        if max_response_bytes < 1:
            raise ValueError("max_response_bytes must be >= 1")
        self.base_url = _normalise_base_url(base_url)
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
        self.max_response_bytes = int(max_response_bytes)
        self.api_key_env = _check_env_name(api_key_env)
        self._api_key = resolve_api_key(api_key, self.api_key_env)
        self._pool = _make_pool(self.base_url)
        self._model = model_name
        self.last_attempts = 0
        """HTTP attempts made by the last task call (1 when the first try succeeded)."""
        self.logger: Optional[PlannerLogger] = None
        if episode_dir is not None:
            self.set_episode_dir(episode_dir)

    @classmethod
    def from_config(
        cls, cfg: Mapping[str, Any], episode_dir: Optional[Union[str, Path]] = None
    ) -> "DexGraspVLAPlanner":
        """Build a planner from the ``planner`` config section (``inference_utils/config/planner/*.yaml``).

        Keys: ``base_url``, ``model_name``, ``api_key_env``, ``timeout_s`` (per attempt),
        ``total_timeout_s`` (per call), ``max_retries``, ``parse_retries``, ``backoff_s``,
        ``max_backoff_s``, ``bbox_format``, ``max_response_bytes``. A literal ``api_key`` is
        refused: keys come only from the environment (``api_key_env`` names the variable).
        """
        if cfg.get("api_key"):
            raise ValueError(
                "planner.api_key: API keys are not read from config files or the command line; export "
                "the key in the environment variable named by planner.api_key_env "
                f"(default {API_KEY_ENV_VARS[0]})"
            )
        kwargs: dict[str, Any] = {
            "base_url": str(cfg["base_url"]),
            "model_name": cfg.get("model_name"),
            "api_key_env": cfg.get("api_key_env"),
            "timeout": float(cfg.get("timeout_s", 60.0)),
            "max_retries": int(cfg.get("max_retries", 3)),
            "parse_retries": int(cfg.get("parse_retries", 1)),
            "backoff_s": float(cfg.get("backoff_s", 1.0)),
            "max_backoff_s": float(cfg.get("max_backoff_s", 10.0)),
            "bbox_format": str(cfg.get("bbox_format", "absolute")),
            "max_response_bytes": int(cfg.get("max_response_bytes", DEFAULT_MAX_RESPONSE_BYTES)),
            "episode_dir": episode_dir,
        }
        if cfg.get("total_timeout_s") is not None:
            kwargs["total_timeout"] = float(cfg["total_timeout_s"])
        return cls(**kwargs)

    # ------------------------------------------------------------------ set-up
    def set_episode_dir(self, episode_dir: Optional[Union[str, Path]]) -> Optional[PlannerLogger]:
        """Start logging into ``episode_dir`` (``None`` stops logging); returns the logger."""
        self.logger = PlannerLogger(episode_dir) if episode_dir is not None else None
        return self.logger

    @property
    def model_name(self) -> str:
        """The model id, discovered from ``/v1/models`` on first use if not given."""
        return self._discover_model(None, time.monotonic() + self.total_timeout, _Attempts())

    def close(self) -> None:
        """Close the pooled HTTP connections."""
        self._pool.close()

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

    # ------------------------------------------------------------------ messages
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

    # ------------------------------------------------------------------ HTTP
    def _exchange(self, method: str, path: str, payload: Optional[dict[str, Any]], deadline: float) -> _HTTPReply:
        """One HTTP request that ends by ``deadline`` (``time.monotonic()``) whatever the server does.

        Raises ``_Failure`` (``timeout``/``connection``/``bad_body``) for anything but a complete response.
        """
        body = None if payload is None else json.dumps(payload, ensure_ascii=False).encode("utf-8")
        headers = [
            (b"Accept", b"application/json"),
            (b"Accept-Encoding", b"identity"),
            (b"Authorization", f"Bearer {self._api_key}".encode("latin-1", errors="replace")),
            (b"User-Agent", b"dexgraspvla-planner"),
        ]
        if body is not None:
            headers.append((b"Content-Type", b"application/json"))
        status: Optional[int] = None
        received = bytearray()
        budget = max(0.0, deadline - time.monotonic())
        token = _DEADLINE.set(deadline)
        try:
            timeouts = {"connect": budget, "read": budget, "write": budget, "pool": budget}
            with self._pool.stream(
                method, self.base_url + path, headers=headers, content=body, extensions={"timeout": timeouts}
            ) as response:
                status = response.status
                content_type = _header(response.headers, b"content-type")
                retry_after = _retry_after(response.headers)
                for chunk in response.iter_stream():
                    received += chunk
                    if len(received) > self.max_response_bytes:
                        partial = _HTTPReply(status, content_type, bytes(received), retry_after, self._secret())
                        raise partial.fail("bad_body", f"body larger than {self.max_response_bytes} bytes")
            return _HTTPReply(status, content_type, bytes(received), retry_after, self._secret())
        except httpcore.TimeoutException as exc:
            partial = _HTTPReply(status or 0, "", bytes(received), None, self._secret())
            raise _Failure(
                "timeout",
                f"timed out: no complete reply within the attempt's {budget:.3g} s deadline "
                f"({type(exc).__name__}; {len(received)} body byte(s) received)",
                status, partial.head() if status is not None else None,
            ) from None
        except (httpcore.NetworkError, httpcore.ProtocolError, httpcore.ProxyError) as exc:
            partial = _HTTPReply(status or 0, "", bytes(received), None, self._secret())
            raise _Failure(
                "connection", f"connection failed ({type(exc).__name__}: {exc or 'no detail'})",
                status, partial.head() if status is not None else None,
            ) from None
        except httpcore.UnsupportedProtocol as exc:
            raise _Failure("connection", f"cannot request {self.base_url + path}: {exc}", retryable=False) from None
        finally:
            _DEADLINE.reset(token)

    def _secret(self) -> str:
        return self._api_key if self._api_key not in ("", "EMPTY") else ""

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
        method: str,
        path: str,
        payload: Optional[dict[str, Any]],
        interpret: Callable[[_HTTPReply], T],
        deadline: float,
        attempts: _Attempts,
    ) -> T:
        """Send the request until ``interpret`` accepts a reply, per the retry policy; count attempts.

        ``interpret`` turns a 2xx reply into the result or raises ``_Failure``. Raises
        ``PlannerError`` (with ``kind``, ``status``, ``body_head``, ``attempts``, ``retryable``).
        """
        transport_failures = parse_failures = 0
        last: Optional[_Failure] = None
        while True:
            now = time.monotonic()
            if now >= deadline:
                raise self._give_up(task, what, last, attempts, "deadline")
            attempts.count += 1
            try:
                reply = self._exchange(method, path, payload, min(deadline, now + self.timeout))
                if not 200 <= reply.status < 300:
                    message = reply.error_message()
                    raise reply.fail(
                        "http_status", f"server answered HTTP {reply.status}" + (f": {message}" if message else ""),
                        retryable=_retryable_status(reply.status),
                    )
                result = interpret(reply)
                if attempts.count > 1:
                    _log.info("planner %s%s succeeded on attempt %d", what, f" [{task}]" if task else "", attempts.count)
                return result
            except _Failure as failure:
                last = failure
                if failure.kind == "bad_reply":
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
        self, task: Optional[str], what: str, failure: Optional[_Failure], attempts: _Attempts, reason: str
    ) -> PlannerError:
        """The ``PlannerError`` for a call that stops retrying (``reason`` says why)."""
        n = attempts.count
        if failure is None:
            message = f"{what}: the call's {self.total_timeout:g} s deadline passed before a request was sent"
        elif failure.kind == "bad_reply":
            message = f"unusable reply after {n} attempt(s): {failure.detail}"
        else:
            message = f"{what} failed after {n} attempt(s): {failure}"
        if failure is not None and reason == "deadline":
            message += f"; stopped: the call's overall deadline of {self.total_timeout:g} s was reached"
        elif reason == "not_retryable" and failure is not None:
            message += "; not retried (a request error, not a transient one)"
        error = PlannerError(message, task=task, reply=failure.reply if failure is not None else None)
        error.kind = "deadline" if reason == "deadline" else (failure.kind if failure else "deadline")
        error.status = failure.status if failure else None
        error.body_head = failure.body_head if failure else None
        error.attempts = n
        error.retryable = bool(failure.retryable) if failure else True
        _log.info("planner %s%s gave up after %d attempt(s)", what, f" [{task}]" if task else "", n)
        return error

    def _discover_model(self, task: Optional[str], deadline: float, attempts: _Attempts) -> str:
        """The model id: the configured one, else the first entry of ``GET /models``."""
        if self._model is not None:
            return self._model

        def interpret(reply: _HTTPReply) -> str:
            data = reply.json_object().get("data")
            if not isinstance(data, list):
                raise reply.fail("bad_body", "JSON body is not a model list (no 'data' list)")
            first = data[0] if data else None
            model = first.get("id") if isinstance(first, dict) else None
            if not isinstance(model, str) or not model:
                raise reply.fail("bad_body", f"the server at {self.base_url} lists no models", retryable=False)
            return model

        self._model = self._with_retries(task, "listing models", "GET", "/models", None, interpret, deadline, attempts)
        return self._model

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

        def interpret(reply: _HTTPReply) -> T:
            text = _completion_text(reply)
            chat.reply = text
            try:
                return parse(text)
            except ReplyParseError as exc:
                raise _Failure("bad_reply", str(exc), reply.status, reply.head(), reply=text) from None

        try:
            model = self._discover_model(task, deadline, discovery)
            payload = {
                "model": model,
                "messages": messages,
                "max_tokens": self.max_tokens,
                "temperature": self.temperature,
            }
            result = self._with_retries(
                task, "chat completion", "POST", "/chat/completions", payload, interpret, deadline, chat
            )
            return result
        except PlannerError as exc:
            error = str(exc)
            raise
        finally:
            self.last_attempts = chat.count
            if self.logger:
                extra: dict[str, Any] = {"model": self._model, "base_url": self.base_url}
                if discovery.count:
                    extra["model_discovery_attempts"] = discovery.count
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

