"""Planner backends (transports): how one chat request reaches a VLM.

* ``HTTPTransport`` (``backend: http``): an OpenAI-compatible server;
* ``TransformersTransport`` (``backend: transformers``): Qwen2-VL / Qwen2.5-VL from a local
  folder, in this process. Imported lazily: ``import planner`` never imports torch.

``planner.backends.tiny_model`` builds a tiny random Qwen2-VL folder for smoke tests.
"""

from __future__ import annotations

from typing import Any

from planner.backends.base import PARSE_FAILURE_KINDS, ChatTransport, Completion, TransportFailure
from planner.backends.http_backend import HTTPTransport

__all__ = [
    "PARSE_FAILURE_KINDS", "ChatTransport", "Completion", "HTTPTransport", "TransformersTransport",
    "TransportFailure",
]


def __getattr__(name: str) -> Any:
    if name == "TransformersTransport":
        from planner.backends.transformers_backend import TransformersTransport  # noqa: PLC0415 (imports torch)

        return TransformersTransport
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
