"""OpenAI-compatible HTTP API of the offline planner (FastAPI).

Endpoints:
    GET  /v1/models            -> {"object": "list", "data": [{"id": MODEL_ID, ...}]}
    GET  /health               -> {"status": "ok"}
    POST /v1/chat/completions  -> a ``chat.completion`` object; images as base64 data URLs.

Malformed requests get HTTP 400 (unknown model 404) with the OpenAI error body
``{"error": {"message", "type", "param", "code"}}``. The vision work runs in a thread pool,
so concurrent clients are served in parallel.

Limits (arguments of :func:`create_app`, options of ``python -m planner.server``):

* ``max_body_mb`` / ``--max-body-mb`` (default 8 MB = 8 * 1024 * 1024 bytes): largest request
  body. A larger ``Content-Length`` is refused with HTTP 413 before any of the body is read; a
  body without ``Content-Length`` (chunked) is counted while it arrives and refused with 413 as
  soon as it passes the cap. The body is never buffered beyond the cap.
* ``max_image_pixels`` / ``--max-image-pixels`` (default 4_194_304 = 2048 x 2048): largest
  width x height of one image. Every image's size is read from its header (PNG ``IHDR``, JPEG
  ``SOF``; WebP/GIF/BMP through Pillow's lazy ``Image.open``) and a larger image is refused
  with HTTP 400 (code ``image_too_large``) *before* it is decoded, so a small compressed
  "decompression bomb" never reaches the decoder. Undecodable data is HTTP 400 too.
  Accepted formats: PNG, JPEG, WebP, GIF, BMP.
* ``max_images`` / ``--max-images`` (default 8): most images in one request (each is decoded,
  so this bounds the memory of one request to about ``max_images * max_image_pixels * 3`` bytes).

Access: the command line binds 127.0.0.1 unless ``--host`` says otherwise. If the token
environment variable (``DEXGRASPVLA_PLANNER_API_KEY`` by default, ``--token-env`` names
another; the token is never given on the command line) is set, every request except
``GET /health`` must carry ``Authorization: Bearer <token>`` (else HTTP 401). Binding a
non-loopback address without that variable set is refused at start-up (:func:`check_bind`).
In code, pass the token as ``create_app(api_token=...)``.
"""

from __future__ import annotations

import hmac
import io
import json
import logging
import struct
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Awaitable, Callable, Optional

import cv2
import numpy as np
from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from PIL import Image, UnidentifiedImageError

from inference_utils.net_security import is_loopback_host  # shared with the policy server; re-exported
from planner.images import ImageDecodeError, data_url_bytes
from planner.server.tasks import TaskError, TaskRequest, answer, recognise_task

MODEL_ID = "dexgraspvla-offline-planner"
LOG = logging.getLogger("planner.server")
_ROLES = {"system", "user", "assistant", "developer"}

DEFAULT_MAX_BODY_MB = 8.0
DEFAULT_MAX_IMAGE_PIXELS = 4_194_304  # 2048 x 2048
DEFAULT_MAX_IMAGES = 8
TOKEN_ENV_VAR = "DEXGRASPVLA_PLANNER_API_KEY"
UNAUTHENTICATED_PATHS = frozenset({"/health"})

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# JPEG start-of-frame markers (they carry the image size); C4, C8 and CC are other segments.
_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
# Other formats are sized (and decoded) by Pillow; only these plugins are tried.
_PIL_FORMATS = ("WEBP", "GIF", "BMP")


class BadRequest(Exception):
    """A malformed request, reported as an OpenAI-style error."""

    def __init__(self, message: str, param: Optional[str] = None, status: int = 400,
                 code: Optional[str] = None, err_type: str = "invalid_request_error"):
        super().__init__(message)
        self.message, self.param, self.status, self.code, self.err_type = message, param, status, code, err_type


def error_body(message: str, err_type: str, param: Optional[str] = None, code: Optional[str] = None) -> dict:
    """The OpenAI error JSON."""
    return {"error": {"message": message, "type": err_type, "param": param, "code": code}}


class ImageTooLarge(ImageDecodeError):
    """An image whose header declares more pixels than allowed (it was not decoded)."""


def check_bind(host: str, token: Optional[str], token_env: str = TOKEN_ENV_VAR) -> None:
    """Refuse a non-loopback ``host`` when no API token is set.

    Raises:
        ValueError: ``host`` is reachable from other machines and ``token`` is empty; the
            message says which environment variable must hold the token.
    """
    if not is_loopback_host(host) and not token:
        raise ValueError(
            f"refusing to bind the offline planner to {host!r}, which is not a loopback address, "
            f"without an API token: set the environment variable {token_env} to a secret token "
            f"(clients then send 'Authorization: Bearer <token>'), or bind 127.0.0.1")


def image_header_size(raw: bytes) -> tuple[int, int, str]:
    """``(width, height, format)`` of an encoded image, read from its header only (no decoding).

    PNG and JPEG headers are parsed here; WebP, GIF and BMP through Pillow's lazy
    ``Image.open`` (which reads the header only). Raises ``ImageDecodeError`` for anything else
    or for a corrupt header.
    """
    if raw.startswith(_PNG_SIGNATURE):
        if len(raw) < 24 or raw[12:16] != b"IHDR":
            raise ImageDecodeError("corrupt PNG: expected the IHDR chunk right after the signature")
        width, height = struct.unpack(">II", raw[16:24])
        return width, height, "PNG"
    if raw.startswith(b"\xff\xd8\xff"):
        return (*_jpeg_size(raw), "JPEG")
    try:
        with Image.open(io.BytesIO(raw), formats=_PIL_FORMATS) as image:
            width, height = image.size
            return width, height, str(image.format)
    except Image.DecompressionBombError as exc:  # Pillow's own (much higher) limit
        raise ImageTooLarge(f"the image is larger than Pillow's safety limit ({exc})") from exc
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, struct.error) as exc:
        raise ImageDecodeError("image data is not a PNG, JPEG, WebP, GIF or BMP image") from exc


def _jpeg_size(raw: bytes) -> tuple[int, int]:
    """Width and height from the first start-of-frame segment of a JPEG."""
    i, n = 2, len(raw)
    while i + 4 <= n:
        if raw[i] != 0xFF:
            raise ImageDecodeError(f"corrupt JPEG: expected a marker at byte {i}")
        marker = raw[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker == 0x01 or 0xD0 <= marker <= 0xD8:  # markers without a length
            i += 2
            continue
        if marker in (0xD9, 0xDA):
            break  # end of image / start of scan before any frame header
        (length,) = struct.unpack(">H", raw[i + 2:i + 4])
        if length < 2:
            raise ImageDecodeError(f"corrupt JPEG: segment length {length} at byte {i}")
        if marker in _JPEG_SOF:
            if i + 9 > n:
                break
            height, width = struct.unpack(">HH", raw[i + 5:i + 9])
            if width == 0 or height == 0:
                raise ImageDecodeError(f"unsupported JPEG: frame header gives size {width}x{height}")
            return width, height
        i += 2 + length
    raise ImageDecodeError("corrupt JPEG: no frame header (SOF) before the image data")


def decode_image_url(url: Any, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> np.ndarray:
    """Decode a base64 image data URL to a BGR ``uint8`` array, checking its size first.

    The width and height are read from the image header (:func:`image_header_size`); an image
    of more than ``max_pixels`` pixels raises ``ImageTooLarge`` without being decoded. Other
    problems (not a data URL, bad base64, unknown format, corrupt data) raise ``ImageDecodeError``.
    """
    raw = data_url_bytes(url)
    if not raw:
        raise ImageDecodeError("image data is empty")
    width, height, fmt = image_header_size(raw)
    if width * height > max_pixels:
        raise ImageTooLarge(
            f"the {fmt} image is {width}x{height} = {width * height} pixels, more than the limit of "
            f"{max_pixels} pixels (max_image_pixels); rejected from its header, not decoded")
    if fmt in ("PNG", "JPEG"):
        image = cv2.imdecode(np.frombuffer(raw, dtype=np.uint8), cv2.IMREAD_COLOR)
        if image is None:
            raise ImageDecodeError(f"the {fmt} image data could not be decoded (corrupt or truncated)")
    else:
        try:
            with Image.open(io.BytesIO(raw), formats=_PIL_FORMATS) as pil_image:
                rgb = np.asarray(pil_image.convert("RGB"))
        except (OSError, SyntaxError, ValueError, struct.error, Image.DecompressionBombError) as exc:
            raise ImageDecodeError(f"the {fmt} image data could not be decoded: {exc}") from exc
        image = np.ascontiguousarray(rgb[..., ::-1])
    if image.shape[0] * image.shape[1] > max_pixels:  # the header lied; should not happen
        raise ImageTooLarge(f"the decoded image is {image.shape[1]}x{image.shape[0]} pixels, more than "
                            f"the limit of {max_pixels} pixels (max_image_pixels)")
    return image


def parse_messages(body: Any, max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
                   max_images: int = DEFAULT_MAX_IMAGES) -> tuple[str, list[np.ndarray], list[str]]:
    """Validate a chat request body; return (all text joined, images in order, text for the log).

    Raises ``BadRequest`` (HTTP 400) for malformed messages, undecodable images, an image of
    more than ``max_image_pixels`` pixels (checked from its header, before decoding) and more
    than ``max_images`` images.
    """
    if not isinstance(body, dict):
        raise BadRequest("request body must be a JSON object")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise BadRequest("'messages' must be a non-empty list", param="messages")
    if body.get("stream"):
        raise BadRequest("streaming is not supported by the offline planner", param="stream")
    texts: list[str] = []
    log_texts: list[str] = []
    images: list[np.ndarray] = []
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise BadRequest(f"{where} must be an object", param=where)
        if message.get("role") not in _ROLES:
            raise BadRequest(f"{where}.role must be one of {sorted(_ROLES)}", param=f"{where}.role")
        content = message.get("content")
        if isinstance(content, str):
            content = [{"type": "text", "text": content}]
        if not isinstance(content, list):
            raise BadRequest(f"{where}.content must be a string or a list of parts", param=f"{where}.content")
        for j, part in enumerate(content):
            pwhere = f"{where}.content[{j}]"
            if not isinstance(part, dict) or "type" not in part:
                raise BadRequest(f"{pwhere} must be an object with a 'type'", param=pwhere)
            if part["type"] == "text":
                if not isinstance(part.get("text"), str):
                    raise BadRequest(f"{pwhere}.text must be a string", param=f"{pwhere}.text")
                texts.append(part["text"])
                log_texts.append(part["text"])
            elif part["type"] == "image_url":
                spec = part.get("image_url")
                url = spec.get("url") if isinstance(spec, dict) else spec
                if len(images) >= max_images:
                    raise BadRequest(f"{pwhere}: more than {max_images} images in one request (max_images)",
                                     param=f"{pwhere}.image_url", code="too_many_images")
                try:
                    image = decode_image_url(url, max_image_pixels)
                except ImageTooLarge as exc:
                    raise BadRequest(f"{pwhere}.image_url: {exc}", param=f"{pwhere}.image_url",
                                     code="image_too_large") from exc
                except ImageDecodeError as exc:
                    raise BadRequest(f"{pwhere}.image_url: {exc}", param=f"{pwhere}.image_url",
                                     code="invalid_image") from exc
                images.append(image)
                log_texts.append(f"<image {len(images)}: {image.shape[1]}x{image.shape[0]}>")
            else:
                raise BadRequest(f"{pwhere}.type {part['type']!r} is not supported (text, image_url)",
                                 param=f"{pwhere}.type")
    return "\n".join(texts), images, log_texts


class _RequestLog:
    """Appends one JSON line per request to ``<log_dir>/server_requests.jsonl``."""

    def __init__(self, log_dir: Optional[Path]):
        self.path = None
        if log_dir is not None:
            Path(log_dir).mkdir(parents=True, exist_ok=True)
            self.path = Path(log_dir) / "server_requests.jsonl"
        self._lock = threading.Lock()

    def write(self, record: dict) -> None:
        if self.path is None:
            return
        with self._lock, open(self.path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(record, ensure_ascii=False) + "\n")


class RequestLimitsMiddleware:
    """Pure-ASGI guard in front of the app: bearer-token check and request-body cap.

    For HTTP requests it (1) checks ``Authorization: Bearer <api_token>`` with
    ``hmac.compare_digest`` when a token is set (paths in ``UNAUTHENTICATED_PATHS`` excepted),
    answering 401; (2) answers 413 when ``Content-Length`` exceeds ``max_body_bytes``, without
    reading the body; (3) otherwise reads the body, counting bytes, answers 413 as soon as the
    count passes the cap (chunked uploads), and hands the buffered body on to the app.
    Early answers carry ``Connection: close`` so an unread body is never parsed.
    """

    def __init__(self, app: Any, max_body_bytes: int, api_token: Optional[str] = None):
        self.app = app
        self.max_body_bytes = int(max_body_bytes)
        self._token = api_token.encode("utf-8") if api_token else None

    async def __call__(self, scope: dict, receive: Callable[[], Awaitable[dict]],
                       send: Callable[[dict], Awaitable[None]]) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])  # last value wins; names are lower-case bytes
        if self._token is not None and scope.get("path") not in UNAUTHENTICATED_PATHS:
            if not self._authorised(headers.get(b"authorization", b"")):
                await self._reject(send, 401, "missing or invalid API token: send 'Authorization: Bearer <token>'",
                                   "authentication_error", "invalid_api_key",
                                   extra_headers=[(b"www-authenticate", b"Bearer")])
                return
        declared = headers.get(b"content-length")
        if declared is not None:
            try:
                length = int(declared)
            except ValueError:
                await self._reject(send, 400, f"invalid Content-Length header {declared[:40]!r}",
                                   "invalid_request_error", "invalid_content_length")
                return
            if length > self.max_body_bytes:
                LOG.warning("request Content-Length %d > %d bytes: rejected (413)", length, self.max_body_bytes)
                await self._reject(send, 413, self._too_large(f"Content-Length is {length} bytes"),
                                   "invalid_request_error", "request_too_large")
                return
        chunks: list[bytes] = []
        total = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return  # the client went away
            chunk = message.get("body", b"")
            total += len(chunk)
            if total > self.max_body_bytes:
                LOG.warning("request body passed %d bytes: rejected (413)", self.max_body_bytes)
                await self._reject(send, 413, self._too_large(f"more than {self.max_body_bytes} bytes were sent"),
                                   "invalid_request_error", "request_too_large")
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        del chunks
        delivered = False

        async def replay() -> dict:
            nonlocal delivered
            if not delivered:
                delivered = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    def _authorised(self, value: bytes) -> bool:
        scheme, _, credentials = value.strip().partition(b" ")
        # compare even on a wrong scheme, so the timing does not tell which part was wrong
        same = hmac.compare_digest(credentials.strip(), self._token)
        return same and scheme.lower() == b"bearer"

    def _too_large(self, what: str) -> str:
        mb = self.max_body_bytes / (1024 * 1024)
        return (f"request body too large: {what}, the limit is {self.max_body_bytes} bytes "
                f"({mb:g} MB, max_body_mb)")

    @staticmethod
    async def _reject(send: Callable[[dict], Awaitable[None]], status: int, message: str, err_type: str,
                      code: str, extra_headers: Optional[list[tuple[bytes, bytes]]] = None) -> None:
        payload = json.dumps(error_body(message, err_type, None, code)).encode("utf-8")
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode()),
                   (b"connection", b"close")] + list(extra_headers or [])
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": payload, "more_body": False})


def create_app(model_id: str = MODEL_ID, log_dir: Optional[str | Path] = None, *,
               max_body_mb: float = DEFAULT_MAX_BODY_MB, max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
               max_images: int = DEFAULT_MAX_IMAGES, api_token: Optional[str] = None) -> FastAPI:
    """Build the offline planner app.

    Args:
        model_id: id reported by ``/v1/models`` and accepted as ``model``.
        log_dir: optional directory receiving a JSONL request log.
        max_body_mb: largest request body in MB (1 MB = 1024 * 1024 bytes); larger -> HTTP 413.
        max_image_pixels: largest width x height of one image, checked from its header
            before decoding; larger -> HTTP 400 ``image_too_large``.
        max_images: most images in one request; more -> HTTP 400 ``too_many_images``.
        api_token: if set, every request except ``GET /health`` needs
            ``Authorization: Bearer <api_token>`` (else HTTP 401).
    """
    if not max_body_mb > 0:
        raise ValueError(f"max_body_mb must be > 0, got {max_body_mb!r}")
    if int(max_image_pixels) < 1 or int(max_images) < 1:
        raise ValueError(f"max_image_pixels and max_images must be >= 1, got {max_image_pixels!r}, {max_images!r}")
    max_image_pixels, max_images = int(max_image_pixels), int(max_images)
    app = FastAPI(title="DexGraspVLA offline planner", version="1.0")
    app.add_middleware(RequestLimitsMiddleware, max_body_bytes=int(max_body_mb * 1024 * 1024),
                       api_token=api_token or None)
    request_log = _RequestLog(Path(log_dir) if log_dir else None)
    created = int(time.time())

    @app.exception_handler(BadRequest)
    async def _bad_request(_: Request, exc: BadRequest) -> JSONResponse:
        return JSONResponse(error_body(exc.message, exc.err_type, exc.param, exc.code), status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse(error_body(f"invalid request: {exc.errors()}", "invalid_request_error"), status_code=400)

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok"}

    @app.get("/v1/models")
    async def list_models() -> dict:
        return {"object": "list",
                "data": [{"id": model_id, "object": "model", "created": created, "owned_by": "dexgraspvla"}]}

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> JSONResponse:
        start = time.monotonic()
        request_id = "chatcmpl-" + uuid.uuid4().hex[:24]
        try:
            body = json.loads(await request.body())
        except ValueError as exc:
            raise BadRequest(f"request body is not valid JSON: {exc}") from exc
        if isinstance(body, dict) and body.get("model") not in (None, model_id):
            raise BadRequest(f"the model {body.get('model')!r} does not exist; use {model_id!r}",
                             param="model", status=404, code="model_not_found")
        text, images, log_texts = await run_in_threadpool(parse_messages, body, max_image_pixels, max_images)
        try:
            task = recognise_task(text)
            reply = await run_in_threadpool(answer, TaskRequest(task, text, images))
        except TaskError as exc:
            request_log.write({"id": request_id, "error": str(exc), "prompt": log_texts})
            raise BadRequest(str(exc), param="messages") from exc
        except Exception as exc:  # report, don't crash the server
            LOG.exception("offline planner failed on request %s", request_id)
            return JSONResponse(error_body(f"internal error: {type(exc).__name__}: {exc}", "server_error"),
                                status_code=500)
        duration = time.monotonic() - start
        LOG.info("%s task=%s images=%d %.3fs", request_id, task, len(images), duration)
        request_log.write({"id": request_id, "time": time.strftime("%Y-%m-%dT%H:%M:%S"), "task": task,
                           "prompt": log_texts, "response": reply, "duration_s": round(duration, 4)})
        prompt_tokens = max(1, len(text) // 4) + 256 * len(images)
        completion_tokens = max(1, len(reply) // 4)
        return JSONResponse({
            "id": request_id,
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model_id,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": reply},
                         "finish_reason": "stop", "logprobs": None}],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                      "total_tokens": prompt_tokens + completion_tokens},
        })

    return app
