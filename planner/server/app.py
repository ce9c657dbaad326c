"""OpenAI-compatible HTTP API of the offline planner (FastAPI).

Endpoints:
    GET  /v1/models            -> {"object": "list", "data": [{"id": MODEL_ID, ...}]}
    GET  /health               -> {"status": "ok"}
    POST /v1/chat/completions  -> a ``chat.completion`` object; images as base64 data URLs.

Malformed requests get HTTP 400 (unknown model 404) with the OpenAI error body
``{"error": {"message", "type", "param", "code"}}``. The vision work runs in a thread pool,
so concurrent clients are served in parallel.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Optional

import numpy as np
from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from planner.images import ImageDecodeError, from_data_url
from planner.server.tasks import TaskError, TaskRequest, answer, recognise_task

MODEL_ID = "dexgraspvla-offline-planner"
LOG = logging.getLogger("planner.server")
_ROLES = {"system", "user", "assistant", "developer"}


class BadRequest(Exception):
    """A malformed request, reported as an OpenAI-style error."""

    def __init__(self, message: str, param: Optional[str] = None, status: int = 400,
                 code: Optional[str] = None, err_type: str = "invalid_request_error"):
        super().__init__(message)
        self.message, self.param, self.status, self.code, self.err_type = message, param, status, code, err_type


def error_body(message: str, err_type: str, param: Optional[str] = None, code: Optional[str] = None) -> dict:
    """The OpenAI error JSON."""
    return {"error": {"message": message, "type": err_type, "param": param, "code": code}}


def parse_messages(body: Any) -> tuple[str, list[np.ndarray], list[str]]:
    """Validate a chat request body; return (all text joined, images in order, text for the log)."""
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
                try:
                    image = from_data_url(url)
                except ImageDecodeError as exc:
                    raise BadRequest(f"{pwhere}.image_url: {exc}", param=f"{pwhere}.image_url") from exc
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


def create_app(model_id: str = MODEL_ID, log_dir: Optional[str | Path] = None) -> FastAPI:
    """Build the offline planner app; ``log_dir`` (optional) receives a JSONL request log."""
    app = FastAPI(title="DexGraspVLA offline planner", version="1.0")
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
        text, images, log_texts = parse_messages(body)
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
