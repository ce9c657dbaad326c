"""The policy server: a loaded policy behind a websocket (asyncio ``websockets``), msgpack messages.

On connect the server sends its metadata (:func:`controller.policy_server.protocol.build_metadata`);
then every binary message is a request (raw observation, optional noise, ``num_samples``, request
id) and gets one reply: the action chunk with timings, or ``{"error": {...}}`` for anything it
refuses -- the connection stays usable after an error reply. Inference runs on one worker thread,
so the event loop keeps answering keep-alive pings while the policy computes, and requests are
served one at a time.

Security and limits (all arguments of :class:`PolicyServer`):

* ``host``: loopback (127.0.0.1) by default. Any other address needs ``token`` (the CLI reads it
  from the environment variable ``DEXGRASPVLA_POLICY_TOKEN``, never from the command line); with
  a token, the websocket handshake must carry ``Authorization: Bearer <token>`` (compared with
  :func:`hmac.compare_digest`) or is refused with HTTP 401 before any message is read.
* ``max_message_bytes``: websocket ``max_size``; a larger message closes the connection with
  code 1009 (message too big) before it is buffered.
* ``max_image_pixels``: an image whose declared height x width is larger gets an
  ``image_too_large`` error reply before any array is built or resized.
* ``max_clients`` (default 1): further connections are refused (HTTP 503 in the handshake, or
  close code 1013 if two handshakes race).
* ``ping_interval_s`` / ``ping_timeout_s``: a client that stops answering keep-alive pings is
  dropped, which frees its slot.

``GET /healthz`` answers ``OK`` without a token (it reveals nothing).

A policy whose ``info()`` says ``accepts_language: True`` (DexVLA:
:class:`controller.policy_server.dexvla.ServedDexVLAPolicy`) is called as
``predict(obs, noise, num_samples, language) -> (actions, reasoning)`` and its replies carry
``reasoning``; a request with ``language`` to any other policy gets a ``bad_request`` reply.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import http
import logging
import os
import threading
import time
from typing import Any, Callable, Iterator, Mapping, Optional

import numpy as np

from controller.policy_server.protocol import (DEFAULT_HOST, DEFAULT_MAX_IMAGE_PIXELS, DEFAULT_MAX_MESSAGE_BYTES,
                                               DEFAULT_MAX_NUM_SAMPLES, DEFAULT_PORT, TOKEN_ENV_VAR, RequestError,
                                               build_metadata, error_reply, packb, parse_request,
                                               peek_request_id, unpackb)
from inference_utils.net_security import bearer_token_matches, check_bind

LOG = logging.getLogger("controller.policy_server")


class ServedPolicy:
    """A chunk policy as the server runs it: ``predict(obs, noise, num_samples) -> (horizon, A)``.

    Wraps a :class:`controller.policy.chunk_runner.ChunkPolicy` (no temporal ensemble: that
    blending is per client, so the client does it). A request's ``num_samples`` selects a
    :class:`ChunkPolicy` sharing the same network (built on first use). Any other policy can be
    served by giving the server an object with ``shape_meta``, ``predict`` and ``info``.
    """

    def __init__(self, chunk_policy: Any, model_id: str, checkpoint_sha256: Optional[str] = None,
                 max_num_samples: int = DEFAULT_MAX_NUM_SAMPLES) -> None:
        if getattr(chunk_policy, "ensemble", None) is not None:
            raise ValueError("serve a ChunkPolicy without temporal ensembling: the client blends chunks")
        if not 1 <= int(chunk_policy.num_samples) <= int(max_num_samples):
            raise ValueError(f"num_samples {chunk_policy.num_samples} outside [1, max_num_samples={max_num_samples}]")
        self.base = chunk_policy
        self.shape_meta = chunk_policy.shape_meta
        self.model_id = str(model_id)
        self.checkpoint_sha256 = checkpoint_sha256
        self.max_num_samples = int(max_num_samples)
        self._runners = {int(chunk_policy.num_samples): chunk_policy}

    @classmethod
    def from_checkpoint(cls, path: str, device: str = "auto", precision: str = "auto", compile: bool = False,
                        use_ema: bool = True, num_samples: int = 1,
                        max_num_samples: int = DEFAULT_MAX_NUM_SAMPLES) -> "ServedPolicy":
        """Load a checkpoint directory (:meth:`ChunkPolicy.from_checkpoint`, the same safe loader)."""
        from controller.workspace.checkpoint import MODEL_FILE, resolve_checkpoint_dir  # noqa: PLC0415
        from controller.workspace.integrity import file_sha256, recorded_hashes  # noqa: PLC0415
        from inference_utils.cli_common import resolve_device  # noqa: PLC0415 - cuda, then mps, then cpu

        device = resolve_device(device)
        ckpt_dir = resolve_checkpoint_dir(path)
        policy = cls.runner_class().from_checkpoint(ckpt_dir, device, use_ema=use_ema, precision=precision,
                                                    compile=compile, num_samples=num_samples)
        digest = recorded_hashes(ckpt_dir).get(MODEL_FILE) or file_sha256(os.path.join(ckpt_dir, MODEL_FILE))
        return cls(policy, os.path.basename(os.path.normpath(ckpt_dir)), digest, max_num_samples)

    def info(self) -> dict:
        """Fields of the handshake that describe the model."""
        return {"model_id": self.model_id, "checkpoint_sha256": self.checkpoint_sha256,
                "policy_class": type(self.base.policy).__name__, "device": str(self.base.device),
                "precision": "bf16" if self.base.autocast else "fp32",
                "max_num_samples": self.max_num_samples, "default_num_samples": int(self.base.num_samples)}

    @classmethod
    def runner_class(cls) -> type:
        """The chunk-policy class this server runs (a policy family's subclass names its own)."""
        from controller.policy.chunk_runner import ChunkPolicy  # noqa: PLC0415

        return ChunkPolicy

    def runner(self, num_samples: int) -> Any:
        """The chunk policy (:meth:`runner_class`) denoising ``num_samples`` chunks per observation."""
        k = int(num_samples)
        if k not in self._runners:
            base = self.base
            self._runners[k] = self.runner_class()(base.policy, base.device, "bf16" if base.autocast else "fp32",
                                                   compile=False, keep_freed_memory=False, num_samples=k)
        return self._runners[k]

    def predict(self, obs: Mapping[str, np.ndarray], noise: Optional[np.ndarray], num_samples: int) -> np.ndarray:
        """One action chunk, float32 (horizon, action_dim)."""
        import torch  # noqa: PLC0415

        tensor = torch.from_numpy(np.array(noise, dtype=np.float32)) if noise is not None else None
        # received arrays are read-only views of the message; torch wants writable memory
        obs = {k: v if v.flags.writeable else np.array(v) for k, v in obs.items()}
        return np.asarray(self.runner(num_samples).predict_chunk(obs, noise=tensor), dtype=np.float32)


class PolicyServer:
    """Serve a :class:`ServedPolicy` over a websocket (see the module docstring for the limits).

    ``port=0`` picks a free port (:attr:`port` holds the bound one once started).
    """

    def __init__(self, policy: Any, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, *,
                 token: Optional[str] = None, token_env: str = TOKEN_ENV_VAR,
                 max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
                 max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS, max_clients: int = 1,
                 ping_interval_s: Optional[float] = 20.0, ping_timeout_s: Optional[float] = 20.0,
                 open_timeout_s: float = 10.0) -> None:
        check_bind(host, token, token_env, "the policy server")
        for name, value in (("max_message_bytes", max_message_bytes), ("max_image_pixels", max_image_pixels),
                            ("max_clients", max_clients)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if not 0 <= int(port) <= 65535:
            raise ValueError(f"port must be in [0, 65535], got {port!r}")
        self.policy = policy
        self.host, self.port = host, int(port)
        self.token = token or None
        self.max_message_bytes, self.max_image_pixels = int(max_message_bytes), int(max_image_pixels)
        self.max_clients = int(max_clients)
        self.ping_interval_s, self.ping_timeout_s, self.open_timeout_s = ping_interval_s, ping_timeout_s, open_timeout_s
        info = policy.info()
        self.metadata = build_metadata(shape_meta=policy.shape_meta, max_message_bytes=self.max_message_bytes,
                                       max_image_pixels=self.max_image_pixels, max_clients=self.max_clients,
                                       token_required=self.token is not None, **info)
        self._metadata_bytes = packb(self.metadata)
        self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="policy-infer")
        self._active = 0
        self.stats = {"connections": 0, "requests": 0, "error_replies": 0, "refused_handshakes": 0}

    # ------------------------------------------------------------------ handshake
    def _process_request(self, connection: Any, request: Any) -> Any:
        if request.path == "/healthz":
            return connection.respond(http.HTTPStatus.OK, "OK\n")
        given = request.headers.get_all("Authorization")  # exactly one header, holding the token
        if self.token is not None and not (len(given) == 1 and bearer_token_matches(given[0], self.token)):
            self.stats["refused_handshakes"] += 1
            LOG.warning("refused a connection from %s: missing or wrong token", connection.remote_address)
            return connection.respond(http.HTTPStatus.UNAUTHORIZED, "missing or wrong token "
                                      "(send 'Authorization: Bearer <token>')\n")
        if self._active >= self.max_clients:
            self.stats["refused_handshakes"] += 1
            LOG.warning("refused a connection from %s: %d client(s) connected (max_clients)",
                        connection.remote_address, self._active)
            return connection.respond(http.HTTPStatus.SERVICE_UNAVAILABLE,
                                      f"busy: serving {self._active} client(s), the limit is {self.max_clients}\n")
        return None

    # ------------------------------------------------------------------ connection
    async def _handler(self, ws: Any) -> None:
        from websockets.exceptions import ConnectionClosed  # noqa: PLC0415
        from websockets.frames import CloseCode  # noqa: PLC0415

        if self._active >= self.max_clients:  # two handshakes raced past _process_request
            self.stats["refused_handshakes"] += 1
            await ws.close(CloseCode.TRY_AGAIN_LATER, "busy: too many clients")
            return
        self._active += 1
        self.stats["connections"] += 1
        peer = ws.remote_address
        LOG.info("client %s connected", peer)
        try:
            await ws.send(self._metadata_bytes)
            while True:
                message = await ws.recv()
                await ws.send(await self._answer(message))
        except ConnectionClosed as exc:
            LOG.info("client %s disconnected (%s)", peer, exc)
        finally:
            self._active -= 1

    async def _answer(self, message: Any) -> bytes:
        t0 = time.perf_counter()
        self.stats["requests"] += 1
        request_id = None
        try:
            msg = unpackb(message, self.max_message_bytes)
            request_id = peek_request_id(msg)
            meta = self.metadata
            req = parse_request(msg, self.policy.shape_meta, max_image_pixels=self.max_image_pixels,
                                max_num_samples=meta["max_num_samples"],
                                default_num_samples=meta["default_num_samples"])
            language = bool(meta.get("accepts_language"))  # a language policy: predict -> (actions, reasoning)
            if req.language is not None and not language:
                raise RequestError("bad_request", f"this server's policy ({meta.get('policy_class')}) takes no "
                                                  "language; send no 'language'")
            t1 = time.perf_counter()
            args = (req.obs, req.noise, req.num_samples) + ((req.language,) if language else ())
            result = await asyncio.get_running_loop().run_in_executor(self._executor, self.policy.predict, *args)
            t2 = time.perf_counter()
            actions, reasoning = result if language else (result, None)
            reply = {"actions": actions, "request_id": request_id,
                     "timing": {"decode_ms": (t1 - t0) * 1e3, "infer_ms": (t2 - t1) * 1e3,
                                "server_ms": (time.perf_counter() - t0) * 1e3}}
            if language:
                reply["reasoning"] = str(reasoning)
            return packb(reply)
        except RequestError as exc:
            self.stats["error_replies"] += 1
            LOG.info("refused request %r: %s: %s", request_id, exc.kind, exc)
            return packb(error_reply(exc.kind, str(exc), request_id))
        except Exception as exc:  # noqa: BLE001 - a failing request must not take the server down
            self.stats["error_replies"] += 1
            LOG.exception("request %r failed", request_id)
            return packb(error_reply("internal_error", f"{type(exc).__name__}: {exc}", request_id))

    # ------------------------------------------------------------------ running
    async def serve(self, started: Optional[Callable[[int], None]] = None,
                    stop: Optional[asyncio.Event] = None) -> None:
        """Serve until ``stop`` is set (forever without one); ``started(port)`` once listening."""
        from websockets.asyncio.server import serve  # noqa: PLC0415

        async with serve(self._handler, self.host, self.port, process_request=self._process_request,
                         max_size=self.max_message_bytes, max_queue=4, compression=None,
                         ping_interval=self.ping_interval_s, ping_timeout=self.ping_timeout_s,
                         open_timeout=self.open_timeout_s, close_timeout=5) as server:
            self.port = int(next(iter(server.sockets)).getsockname()[1])
            LOG.info("policy server for %s listening on ws://%s:%d (token %s, max %d client(s))",
                     self.metadata["model_id"], self.host, self.port,
                     "required" if self.token else "off", self.max_clients)
            if started is not None:
                started(self.port)
            if stop is None:
                await server.serve_forever()
            else:
                await stop.wait()

    def serve_forever(self) -> None:
        """Block serving (``python -m controller.serve``)."""
        try:
            asyncio.run(self.serve())
        finally:
            self._executor.shutdown(wait=False)

    @contextlib.contextmanager
    def running_in_thread(self, start_timeout_s: float = 30.0) -> Iterator["PolicyServer"]:
        """Serve on a background thread until the block exits (tests, benchmarks, demos)."""
        ready = threading.Event()
        box: dict = {}

        def run() -> None:
            loop = asyncio.new_event_loop()
            box["loop"], box["stop"] = loop, asyncio.Event()
            try:
                loop.run_until_complete(self.serve(lambda _port: ready.set(), box["stop"]))
            except BaseException as exc:  # noqa: BLE001 - reported to the starting thread
                box["error"] = exc
            finally:
                ready.set()
                loop.close()

        thread = threading.Thread(target=run, name="policy-server", daemon=True)
        thread.start()
        if not ready.wait(start_timeout_s) or "error" in box:
            raise RuntimeError(f"the policy server did not start on {self.host}:{self.port}: {box.get('error')}")
        try:
            yield self
        finally:
            loop, stop = box["loop"], box["stop"]
            if not loop.is_closed():
                with contextlib.suppress(RuntimeError):
                    loop.call_soon_threadsafe(stop.set)
            thread.join(timeout=15)

    @property
    def url(self) -> str:
        """``ws://host:port``."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"ws://{host}:{self.port}"
