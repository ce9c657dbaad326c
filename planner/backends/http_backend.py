"""The HTTP backend: an OpenAI-compatible chat server (vLLM, DashScope, the offline ``planner.server``).

Deadlines
---------
Each attempt has ONE deadline: connecting, sending the request, receiving the headers and the
whole body must all finish within it, however slowly the server trickles its bytes. When it
passes, the attempt's connection is closed at once and the attempt counts as a timeout.

Why not the ``openai`` SDK: its ``timeout`` is httpx's timeout, which bounds each socket
operation separately, so a server sending one byte per second never trips it (a 5 s timeout
took 28 s). The transport therefore speaks HTTP through ``httpcore`` (the engine under httpx and
the SDK) with a small network backend, ``_DeadlineBackend``, that gives every socket operation
(connect, TLS handshake, each send, each receive) ``min(its own timeout, time left before the
attempt's deadline)`` and fails the operation once the deadline has passed. That bounds the
header phase as well as the body, with no watchdog thread; the only remaining overshoot is
the scheduler's latency. (Name resolution, ``getaddrinfo``, cannot be interrupted; use an IP
address in ``base_url`` where that matters.) ``HTTP(S)_PROXY``/``NO_PROXY`` are honoured for
http(s) proxies, loopback hosts are never proxied.

Failures (``TransportFailure``, kinds as in ``PlannerError``): ``timeout``, ``connection``,
``http_status`` (retryable for 5xx, 408 and 429 only) and ``bad_body`` (not JSON, empty,
truncated, not a chat completion, too large).
"""

from __future__ import annotations

import contextvars
import json
import math
import os
import re
import time
import urllib.request
from dataclasses import dataclass, field
from typing import Any, Iterable, Optional
from urllib.parse import unquote, urlparse

import httpcore
import httpx
import numpy as np

from planner.backends.base import ChatTransport, Completion, TransportFailure
from planner.images import to_data_url

API_KEY_ENV_VARS = ("DEXGRASPVLA_PLANNER_API_KEY", "OPENAI_API_KEY")
"""Environment variables searched, in order, for the API key."""

BODY_HEAD_CHARS = 200
"""How many characters of a bad body are quoted in errors and logs."""

DEFAULT_MAX_RESPONSE_BYTES = 8 * 1024 * 1024
"""Replies larger than this are refused (a chat completion is a few kB)."""

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

    def fail(self, kind: str, detail: str, retryable: bool = True) -> TransportFailure:
        """A ``TransportFailure`` carrying this reply's status and body head."""
        return TransportFailure(kind, detail, self.status, self.head(), retryable=retryable, retry_after=self.retry_after)

    def json_object(self) -> dict[str, Any]:
        """The body as a JSON object; ``TransportFailure`` (``bad_body``) when it is anything else."""
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
    """The assistant text of a chat-completion body; ``TransportFailure`` (``bad_body``) if it is not one."""
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

class HTTPTransport(ChatTransport):
    """OpenAI-compatible chat over HTTP(S), one deadline-bounded request per attempt.

    Args:
        base_url: the endpoint, e.g. ``http://127.0.0.1:8000/v1`` (``/v1`` is appended when the
            URL has no path).
        model_name: model id; discovered from ``GET /models`` (first entry) when ``None``.
        api_key: explicit key for programmatic use; by default read from the environment
            (``resolve_api_key``). Never store keys in committed files.
        api_key_env: NAME of an extra environment variable searched first for the key.
        image_format: ``png`` (lossless, default) or ``jpeg`` for the image data URLs.
        max_response_bytes: larger bodies are refused (``bad_body``).
    """

    name = "http"
    request_name = "chat completion"

    def __init__(
        self,
        base_url: str = "http://127.0.0.1:8001/v1",
        model_name: Optional[str] = None,
        api_key: Optional[str] = None,
        api_key_env: Optional[str] = None,
        image_format: str = "png",
        max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
    ) -> None:
        if max_response_bytes < 1:
            raise ValueError("max_response_bytes must be >= 1")
        self.base_url = _normalise_base_url(base_url)
        self.image_format = image_format
        self.max_response_bytes = int(max_response_bytes)
        self.api_key_env = _check_env_name(api_key_env)
        self._api_key = resolve_api_key(api_key, self.api_key_env)
        self._pool = _make_pool(self.base_url)
        self.model = model_name

    def image_part(self, image_bgr: np.ndarray) -> dict[str, Any]:
        """An OpenAI ``image_url`` part holding the image as a PNG/JPEG data URL."""
        return {"type": "image_url", "image_url": {"url": to_data_url(image_bgr, self.image_format)}}

    def complete(
        self,
        messages: list[dict[str, Any]],
        *,
        model: Optional[str],
        max_tokens: int,
        temperature: float,
        deadline: float,
    ) -> Completion:
        """``POST /chat/completions`` once; the assistant text of a 2xx chat completion."""
        payload = {"model": model, "messages": messages, "max_tokens": max_tokens, "temperature": temperature}
        reply = self._exchange("POST", "/chat/completions", payload, deadline)
        self._check_status(reply)
        return Completion(_completion_text(reply), status=reply.status, body_head=reply.head())

    def discover_model(self, deadline: float) -> str:
        """``GET /models`` once; the first model's id."""
        reply = self._exchange("GET", "/models", None, deadline)
        self._check_status(reply)
        data = reply.json_object().get("data")
        if not isinstance(data, list):
            raise reply.fail("bad_body", "JSON body is not a model list (no 'data' list)")
        first = data[0] if data else None
        model = first.get("id") if isinstance(first, dict) else None
        if not isinstance(model, str) or not model:
            raise reply.fail("bad_body", f"the server at {self.base_url} lists no models", retryable=False)
        return model

    def log_info(self) -> dict[str, Any]:
        """The endpoint (the model id is logged by the client)."""
        return {"base_url": self.base_url}

    def close(self) -> None:
        """Close the pooled HTTP connections."""
        self._pool.close()

    @staticmethod
    def _check_status(reply: _HTTPReply) -> None:
        if not 200 <= reply.status < 300:
            message = reply.error_message()
            raise reply.fail(
                "http_status", f"server answered HTTP {reply.status}" + (f": {message}" if message else ""),
                retryable=_retryable_status(reply.status),
            )

    def _exchange(self, method: str, path: str, payload: Optional[dict[str, Any]], deadline: float) -> _HTTPReply:
        """One HTTP request that ends by ``deadline`` (``time.monotonic()``) whatever the server does.

        Raises ``TransportFailure`` (``timeout``/``connection``/``bad_body``) for anything but a complete response.
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
            raise TransportFailure(
                "timeout",
                f"timed out: no complete reply within the attempt's {budget:.3g} s deadline "
                f"({type(exc).__name__}; {len(received)} body byte(s) received)",
                status, partial.head() if status is not None else None,
            ) from None
        except (httpcore.NetworkError, httpcore.ProtocolError, httpcore.ProxyError) as exc:
            partial = _HTTPReply(status or 0, "", bytes(received), None, self._secret())
            raise TransportFailure(
                "connection", f"connection failed ({type(exc).__name__}: {exc or 'no detail'})",
                status, partial.head() if status is not None else None,
            ) from None
        except httpcore.UnsupportedProtocol as exc:
            raise TransportFailure("connection", f"cannot request {self.base_url + path}: {exc}", retryable=False) from None
        finally:
            _DEADLINE.reset(token)

    def _secret(self) -> str:
        return self._api_key if self._api_key not in ("", "EMPTY") else ""
