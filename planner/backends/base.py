"""What a planner backend (a *transport*) must do, and how it reports a failed attempt.

The planner client (``planner.client.DexGraspVLAPlanner``) owns everything the backends share:
the task prompts, the reply parsers, the retry policy, the deadlines, the episode log and the
``PlannerError`` it raises. A transport only does "send these chat messages, give me the
reply text", once per attempt:

* ``HTTPTransport`` (``planner.backends.http_backend``): an OpenAI-compatible server (vLLM,
  DashScope, the offline ``planner.server``);
* ``TransformersTransport`` (``planner.backends.transformers_backend``): Qwen2-VL / Qwen2.5-VL
  loaded from a local folder and run in this process with ``transformers``.

Messages are OpenAI-style chat messages: ``{"role": "system"|"user", "content": [parts]}``
with text parts ``{"type": "text", "text": ...}`` and one image part per image, made by the
transport's own ``image_part`` (a PNG/JPEG data URL for HTTP, the pixel array itself for the
local model, so no encode/decode round trip happens in-process).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np

PARSE_FAILURE_KINDS = frozenset({"bad_reply", "empty_output"})
"""Failure kinds that count against ``parse_retries`` (asked again at once, no backoff)."""


class TransportFailure(Exception):
    """One failed attempt. The client turns the last one into a ``PlannerError`` when it gives up.

    Attributes:
        kind: the ``PlannerError.kind`` it becomes (``timeout``, ``connection``, ``http_status``,
            ``bad_body``, ``bad_reply``; for the local backend also ``load``, ``bad_input``,
            ``out_of_memory``, ``generation``, ``empty_output``).
        detail: human-readable cause.
        status: the HTTP status, ``None`` without an HTTP response (always for local models).
        body_head: ``repr`` of the first characters of the HTTP body, when there was one.
        retryable: whether trying again could help (see ``DexGraspVLAPlanner`` for the policy).
        retry_after: the server's ``Retry-After`` in seconds, if any.
        reply: the model's text, when one was produced.
        no_retry_note: why a non-retryable failure is not retried (ends the error message).
    """

    def __init__(
        self,
        kind: str,
        detail: str,
        status: Optional[int] = None,
        body_head: Optional[str] = None,
        retryable: bool = True,
        retry_after: Optional[float] = None,
        reply: Optional[str] = None,
        no_retry_note: str = "a request error, not a transient one",
    ) -> None:
        super().__init__(detail)
        self.kind = kind
        self.detail = detail
        self.status = status
        self.body_head = body_head
        self.retryable = retryable
        self.retry_after = retry_after
        self.reply = reply
        self.no_retry_note = no_retry_note

    def __str__(self) -> str:
        parts = [self.detail]
        if self.status is not None:
            parts.append(f"HTTP {self.status}")
        if self.body_head is not None:
            parts.append(f"body starts {self.body_head}")
        return "; ".join(parts)


@dataclass
class Completion:
    """The reply of one successful attempt.

    Attributes:
        text: the assistant's reply text (what the task parsers read).
        status: HTTP status of the response (``None`` for a local model).
        body_head: ``repr`` of the start of the HTTP body (``None`` for a local model); quoted
            in the error when the text cannot be parsed.
        usage: backend-specific counters written to the episode log (token counts, seconds).
    """

    text: str
    status: Optional[int] = None
    body_head: Optional[str] = None
    usage: dict[str, Any] = field(default_factory=dict)


class ChatTransport:
    """Base class of the planner backends: one chat request per call of ``complete``.

    Subclasses set ``name`` (the ``backend`` config value) and ``request_name`` (how an attempt
    is named in errors and logs) and implement ``complete``; the rest has usable defaults.
    """

    name = "base"
    request_name = "chat request"

    model: Optional[str] = None
    """The model id; ``None`` means it must be discovered (``discover_model``) before ``complete``."""

    def image_part(self, image_bgr: np.ndarray) -> dict[str, Any]:
        """The message content part carrying one validated BGR ``uint8`` image."""
        raise NotImplementedError

    def complete(
        self,
        messages: list[dict[str, Any]],
        *,
        model: Optional[str],
        max_tokens: int,
        temperature: float,
        deadline: float,
    ) -> Completion:
        """Run ONE attempt, finished by ``deadline`` (``time.monotonic()``); ``TransportFailure`` on failure."""
        raise NotImplementedError

    def discover_model(self, deadline: float) -> str:
        """ONE attempt at finding the model id (only called while ``model`` is ``None``)."""
        raise TransportFailure("bad_body", f"the {self.name} backend cannot discover a model id", retryable=False)

    def warm_up(self, deadline: float) -> None:
        """Get ready for the first request (e.g. load the weights); ``TransportFailure`` if impossible."""

    def log_info(self) -> dict[str, Any]:
        """Fields written into every episode-log record (where the replies came from)."""
        return {"backend": self.name}

    def close(self) -> None:
        """Release connections or other per-client resources."""
