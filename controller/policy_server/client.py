"""Client of the policy server with the in-process chunk policy's interface.

:class:`RemoteChunkPolicy` has :class:`controller.policy.chunk_runner.ChunkPolicy`'s methods
(``predict_chunk(raw_obs, noise=None)``, ``reset()``, ``consumed(n)``, ``action_horizon``,
``shape_meta``, ``num_samples``), so the simulator evaluator, the benchmarks and the runtime use
either one. What stays on the client, so that a remote run reproduces an in-process run:

* the diffusion noise: drawn here with torch (``noise="local"``, the default) from ``generator``
  or, without one, from torch's global generator -- exactly the draw the in-process policy makes
  on a CPU -- and sent with the request; ``noise="server"`` leaves it to the server;
* the temporal ensemble of overlapping chunks (``reset`` / ``consumed`` are local).

A server of a language policy (DexVLA, handshake ``accepts_language: true``) takes the
instruction with each request (``predict_chunk(raw_obs, language=...)`` or
:meth:`RemoteChunkPolicy.set_instruction`) and replies with the generated reasoning:
:attr:`RemoteChunkPolicy.last_reasoning`, or both at once from
:meth:`RemoteChunkPolicy.predict_with_reasoning`.

Failures: an error reply raises :class:`PolicyServerError` (the connection stays up). A lost
connection, a reply timeout or a malformed reply drops the connection -- a late reply can never be
taken for the next request's -- then up to ``reconnect_attempts`` reconnections are tried (delay
``reconnect_delay_s``, doubling, at most 5 s), each resending the same request; after that
:class:`PolicyServerUnavailable` is raised and the caller must stop the robot (the runtime holds
the arm). A server that comes back with a different model is refused (:class:`PolicyServerError`).
"""
from __future__ import annotations

import itertools
import logging
import time
from typing import Any, Mapping, Optional

import numpy as np

from controller.policy_server.protocol import (DEFAULT_HOST, DEFAULT_MAX_REPLY_BYTES, DEFAULT_PORT, TOKEN_ENV_VAR,
                                               ProtocolError, RequestError, check_metadata, decode_arrays, packb,
                                               unpackb, valid_token_env_name)
from inference_utils.net_security import is_loopback_host, token_from_env

LOG = logging.getLogger("controller.policy_server.client")
NOISE_MODES = ("local", "server")


class PolicyServerError(RuntimeError):
    """The server refused a request (``kind`` = the error reply's type) or serves another model."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(f"policy server error ({kind}): {message}")
        self.kind = kind


class PolicyServerUnavailable(ConnectionError):
    """The connection to the policy server was lost and bounded reconnection failed."""

    def __init__(self, message: str, attempts: int) -> None:
        super().__init__(message)
        self.attempts = attempts


class _Retryable(Exception):
    """A connection-level failure worth a reconnect (wraps the cause)."""


class RemoteChunkPolicy:
    """Raw observation -> (horizon, 13) action chunk, computed by a policy server.

    Args:
        host, port: the server (``python -m controller.serve``).
        token: the shared token; ``None`` reads the environment variable ``token_env``. A
            non-loopback ``host`` without a token is refused here (the server would refuse it).
        timeout_s: longest wait for one reply; connect_timeout_s: for connecting + handshake.
        reconnect_attempts, reconnect_delay_s: bounded reconnection after a lost connection.
        num_samples: chunks denoised per observation and averaged (sent with every request).
        temporal_ensemble: ``None`` or a decay per step (client-side blending, as ChunkPolicy).
        noise: ``"local"`` (draw here, see module docstring) or ``"server"``.
        generator: a ``torch.Generator`` for the local noise (``None``: torch's global one).
        connect: connect now (default) -- a missing server is reported before anything moves.
    """

    supports_attention = False

    def __init__(self, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, *, token: Optional[str] = None,
                 token_env: str = TOKEN_ENV_VAR, timeout_s: float = 30.0, connect_timeout_s: float = 10.0,
                 reconnect_attempts: int = 3, reconnect_delay_s: float = 0.5, num_samples: int = 1,
                 temporal_ensemble: Optional[float] = None, noise: str = "local", generator: Any = None,
                 max_reply_bytes: int = DEFAULT_MAX_REPLY_BYTES, ping_interval_s: Optional[float] = 20.0,
                 ping_timeout_s: Optional[float] = 20.0, connect: bool = True) -> None:
        if not valid_token_env_name(token_env):
            raise ValueError(f"token_env: {token_env!r} is not an environment variable name")
        if noise not in NOISE_MODES:
            raise ValueError(f"noise must be one of {NOISE_MODES}, got {noise!r}")
        if isinstance(num_samples, bool) or int(num_samples) != num_samples or num_samples < 1:
            raise ValueError(f"num_samples must be an integer >= 1, got {num_samples!r}")
        if isinstance(reconnect_attempts, bool) or int(reconnect_attempts) != reconnect_attempts \
                or reconnect_attempts < 0:
            raise ValueError(f"reconnect_attempts must be an integer >= 0, got {reconnect_attempts!r}")
        if not (timeout_s > 0 and connect_timeout_s > 0 and reconnect_delay_s >= 0):
            raise ValueError("timeout_s and connect_timeout_s must be > 0, reconnect_delay_s >= 0")
        self.token = token if token is not None else token_from_env(token_env)
        if not self.token and not is_loopback_host(host):
            raise ValueError(f"the policy server at {host!r} is not on this machine: set the environment variable "
                             f"{token_env} to the server's token (the server refuses clients without it)")
        self.host, self.port = str(host), int(port)
        self.url = f"ws://[{self.host}]:{self.port}" if ":" in self.host else f"ws://{self.host}:{self.port}"
        self.timeout_s, self.connect_timeout_s = float(timeout_s), float(connect_timeout_s)
        self.reconnect_attempts, self.reconnect_delay_s = int(reconnect_attempts), float(reconnect_delay_s)
        self.num_samples = int(num_samples)
        self.noise_mode, self.generator = noise, generator
        self.max_reply_bytes = int(max_reply_bytes)
        self.ping_interval_s, self.ping_timeout_s = ping_interval_s, ping_timeout_s
        self.metadata: Optional[dict] = None
        self.ensemble = None
        self._temporal_ensemble = temporal_ensemble
        self._ws: Any = None
        self._ids = itertools.count(1)
        #: counters: requests sent, replies, error replies, connections made, reconnect attempts
        self.stats = {"requests": 0, "replies": 0, "error_replies": 0, "connections": 0, "reconnect_attempts": 0,
                      "bytes_sent": 0, "bytes_received": 0}
        self.last_timing: dict = {}
        #: language policies: the instruction sent when a call names none, and the last reply's reasoning
        self.instruction: Optional[str] = None
        self.last_reasoning = ""
        if noise == "local":
            import torch  # noqa: F401,PLC0415 - imported now: callers seed torch's generator per episode
        if connect:
            self.connect()

    # ------------------------------------------------------------------ connection
    def connect(self) -> dict:
        """Connect and read the handshake (once; see :meth:`_open`); returns the metadata."""
        if self._ws is None:
            try:
                self._open()
            except _Retryable as exc:
                raise PolicyServerUnavailable(
                    f"cannot reach the policy server at {self.url}: {exc.__cause__ or exc} (start it with "
                    f"'python -m controller.serve --checkpoint CKPT --port {self.port}')", 0) from exc
        return self.metadata

    def _open(self) -> None:
        from websockets.exceptions import InvalidHandshake, InvalidStatus, WebSocketException  # noqa: PLC0415

        headers = {"Authorization": f"Bearer {self.token}"} if self.token else None
        try:
            ws = open_websocket(self.url, additional_headers=headers, open_timeout=self.connect_timeout_s,
                                max_size=self.max_reply_bytes, max_queue=4, ping_interval=self.ping_interval_s,
                                ping_timeout=self.ping_timeout_s, close_timeout=2)
        except InvalidStatus as exc:
            status = exc.response.status_code
            if status in (401, 403):
                raise PolicyServerError("unauthorized", f"the server at {self.url} refused the token "
                                        f"(HTTP {status}); set the token environment variable") from None
            raise _Retryable(f"handshake refused with HTTP {status}") from exc
        except (OSError, TimeoutError, InvalidHandshake, WebSocketException) as exc:
            raise _Retryable(str(exc)) from exc
        try:
            meta = check_metadata(decode_arrays(unpackb(ws.recv(timeout=self.connect_timeout_s))))
        except (OSError, TimeoutError, WebSocketException, RequestError) as exc:
            ws.close()
            raise _Retryable(f"no handshake from the server: {exc}") from exc
        except ProtocolError as exc:
            ws.close()
            raise PolicyServerError("protocol", str(exc)) from None
        if self.metadata is not None and meta.get("checkpoint_sha256") != self.metadata.get("checkpoint_sha256"):
            ws.close()
            raise PolicyServerError("model_changed", f"the server at {self.url} now serves "
                                    f"{meta.get('model_id')} ({meta.get('checkpoint_sha256')}), not "
                                    f"{self.metadata.get('model_id')} ({self.metadata.get('checkpoint_sha256')})")
        if self.num_samples > int(meta["max_num_samples"]):
            ws.close()
            raise PolicyServerError("bad_request", f"num_samples={self.num_samples} exceeds the server's "
                                    f"max_num_samples={meta['max_num_samples']}")
        if self.metadata is None:
            from controller.policy.temporal_ensemble import TemporalEnsemble  # noqa: PLC0415

            if self._temporal_ensemble is not None:
                self.ensemble = TemporalEnsemble(float(self._temporal_ensemble), int(meta["action_horizon"]))
            LOG.info("connected to policy server %s: model %s (%s), horizon %d, device %s", self.url,
                     meta.get("model_id"), str(meta.get("checkpoint_sha256"))[:12], meta["action_horizon"],
                     meta.get("device"))
        self.metadata = meta
        self._ws = ws
        self.stats["connections"] += 1

    def _drop(self) -> None:
        ws, self._ws = self._ws, None
        if ws is not None:
            try:
                ws.close()
            except Exception:  # noqa: BLE001 - the connection is being discarded anyway
                pass

    def close(self) -> None:
        """Close the connection (a later request reconnects)."""
        self._drop()

    def __enter__(self) -> "RemoteChunkPolicy":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __del__(self) -> None:  # free the server's client slot when the policy is dropped
        try:
            self._drop()
        except Exception:  # noqa: BLE001
            pass

    # ------------------------------------------------------------------ the chunk-policy interface
    @property
    def action_horizon(self) -> int:
        return int((self.metadata or self.connect())["action_horizon"])

    @property
    def action_dim(self) -> int:
        return int((self.metadata or self.connect())["action_dim"])

    @property
    def shape_meta(self) -> dict:
        return (self.metadata or self.connect())["shape_meta"]

    @property
    def accepts_language(self) -> bool:
        """True when the server's policy takes a language instruction (DexVLA)."""
        return bool((self.metadata or self.connect()).get("accepts_language"))

    def set_instruction(self, text: str) -> None:
        """The instruction sent with the following requests (language policies only)."""
        if not self.accepts_language:
            raise PolicyServerError("bad_request", f"the server's policy ({self.metadata.get('policy_class')}) "
                                    "takes no language")
        self.instruction = str(text)

    def predict_with_reasoning(self, raw_obs: Mapping[str, np.ndarray], language: Optional[str] = None,
                               noise: Any = None) -> tuple[np.ndarray, str]:
        """``(chunk float32 (horizon, action_dim), reasoning)`` from a language policy's server."""
        chunk = self.predict_chunk(raw_obs, noise=noise, language=language)
        return chunk, self.last_reasoning

    def reset(self) -> None:
        """Start a new attempt / episode: forget the chunks kept for temporal ensembling."""
        if self.ensemble is not None:
            self.ensemble.reset()

    def consumed(self, n: int) -> None:
        """``n`` actions of the last returned chunk were executed (temporal ensembling's clock)."""
        if self.ensemble is not None:
            self.ensemble.advance(n)

    def _draw_noise(self) -> Optional[np.ndarray]:
        if self.noise_mode != "local":
            return None
        import torch  # noqa: PLC0415

        k, h, a = self.num_samples, self.action_horizon, self.action_dim
        shape = (k, h, a) if k > 1 else (h, a)
        return torch.randn(shape, generator=self.generator).numpy()  # the in-process policy's CPU draw

    def predict_chunk(self, raw_obs: Mapping[str, np.ndarray], noise: Any = None,
                      return_attention: bool = False, language: Optional[str] = None) -> np.ndarray:
        """Predict one action chunk, float32 (horizon, action_dim), on the server. ``noise``: optional
        ([num_samples,] horizon, action_dim) (torch or numpy); by default drawn as described above.
        ``language``: the instruction (language policies; default :attr:`instruction`); the reply's
        reasoning is kept in :attr:`last_reasoning`."""
        if return_attention:
            raise ValueError("attention maps are not available from a policy server")
        from controller.common.shape_meta import OBS_KEYS  # noqa: PLC0415

        if self.metadata is None:
            self.connect()
        if noise is None:
            noise = self._draw_noise()
        elif hasattr(noise, "detach"):
            noise = noise.detach().cpu().numpy()
        request_id = next(self._ids)
        request = {"obs": {k: np.asarray(raw_obs[k]) for k in OBS_KEYS if k in raw_obs},
                   "num_samples": self.num_samples, "request_id": request_id}
        if noise is not None:
            request["noise"] = np.asarray(noise, dtype=np.float32)
        text = language if language is not None else self.instruction
        if text is not None:
            request["language"] = str(text)
        reply = self._round_trip(packb(request), request_id)
        if "error" in reply:
            self.stats["error_replies"] += 1
            err = reply["error"] if isinstance(reply["error"], dict) else {}
            raise PolicyServerError(str(err.get("type", "error")), str(err.get("message", reply["error"])))
        chunk = np.asarray(reply["actions"], dtype=np.float32)
        self.last_reasoning = str(reply.get("reasoning") or "")
        if self.ensemble is not None:
            chunk = self.ensemble.add(chunk)
        return chunk

    # ------------------------------------------------------------------ one request, with reconnects
    def _round_trip(self, payload: bytes, request_id: int) -> dict:
        from websockets.exceptions import WebSocketException  # noqa: PLC0415

        attempts = 0
        while True:
            try:
                if self._ws is None:
                    self._open()
                self.stats["requests"] += 1
                self._ws.send(payload)
                self.stats["bytes_sent"] += len(payload)
                data = self._ws.recv(timeout=self.timeout_s)
                self.stats["bytes_received"] += len(data)
                return self._check_reply(data, request_id)
            except (_Retryable, OSError, TimeoutError, WebSocketException, ProtocolError) as exc:
                self._drop()  # never read a late reply on this connection
                cause = exc.__cause__ if isinstance(exc, _Retryable) and exc.__cause__ else exc
                if attempts >= self.reconnect_attempts:
                    raise PolicyServerUnavailable(
                        f"lost the policy server at {self.url} ({type(cause).__name__}: {cause}); "
                        f"{attempts} reconnect attempt(s) failed -- stopping", attempts) from cause
                delay = min(self.reconnect_delay_s * 2 ** attempts, 5.0)
                attempts += 1
                self.stats["reconnect_attempts"] += 1
                LOG.warning("policy server %s: %s: %s; reconnect attempt %d/%d in %.1f s", self.url,
                            type(cause).__name__, cause, attempts, self.reconnect_attempts, delay)
                time.sleep(delay)

    def _check_reply(self, data: Any, request_id: int) -> dict:
        try:
            reply = decode_arrays(unpackb(data))
        except RequestError as exc:
            raise ProtocolError(f"malformed reply: {exc}") from None
        if not isinstance(reply, dict) or reply.get("request_id") != request_id:
            raise ProtocolError(f"reply to request {reply.get('request_id') if isinstance(reply, dict) else '?'} "
                                f"received for request {request_id}")
        self.stats["replies"] += 1
        if "error" in reply:
            return reply
        actions = reply.get("actions")
        want = (int(self.metadata["action_horizon"]), int(self.metadata["action_dim"]))
        if not isinstance(actions, np.ndarray) or actions.shape != want or not np.all(np.isfinite(actions)):
            raise ProtocolError(f"malformed actions in the reply: expected finite {want}, got "
                                f"{getattr(actions, 'shape', type(actions).__name__)}")
        if not isinstance(reply.get("reasoning", ""), str):
            raise ProtocolError(f"malformed reasoning in the reply: {type(reply['reasoning']).__name__}")
        self.last_timing = reply.get("timing") if isinstance(reply.get("timing"), dict) else {}
        return reply


def open_websocket(url: str, **kwargs: Any) -> Any:
    """A long-lived synchronous websocket connection (``websockets.sync.client.connect`` without
    compression or proxy; on websockets >= 17 the historical, non-context-manager form explicitly)."""
    import inspect  # noqa: PLC0415

    from websockets.sync.client import connect  # noqa: PLC0415

    kwargs.setdefault("compression", None)
    if "proxy" in inspect.signature(connect).parameters:
        kwargs.setdefault("proxy", None)  # never route the robot's policy traffic through an HTTP proxy
    if "legacy" in inspect.signature(connect).parameters:
        kwargs.setdefault("legacy", True)
    return connect(url, **kwargs)


def wait_for_server(host: str, port: int, timeout_s: float = 60.0) -> None:
    """Poll ``GET /healthz`` until the server answers (benchmarks, scripts); raises TimeoutError."""
    import http.client  # noqa: PLC0415

    deadline = time.monotonic() + timeout_s
    last: Any = None
    while time.monotonic() < deadline:
        try:
            conn = http.client.HTTPConnection(host, port, timeout=2)
            conn.request("GET", "/healthz")
            if conn.getresponse().status == 200:
                conn.close()
                return
        except OSError as exc:
            last = exc
        time.sleep(0.1)
    raise TimeoutError(f"the policy server at {host}:{port} did not answer within {timeout_s} s ({last})")


def parse_address(text: str, default_port: int = DEFAULT_PORT) -> tuple[str, int]:
    """``HOST[:PORT]``, ``[IPv6]:PORT`` or ``ws://HOST:PORT`` -> ``(host, port)``."""
    value = str(text).strip()
    if value.startswith("ws://"):
        value = value[len("ws://"):].rstrip("/")
    if value.startswith("["):
        host, _, rest = value[1:].partition("]")
        port_text = rest[1:] if rest.startswith(":") else ""
    elif value.count(":") == 1:
        host, port_text = value.split(":")
    else:
        host, port_text = value, ""
    try:
        port = int(port_text) if port_text else int(default_port)
    except ValueError:
        raise ValueError(f"expected HOST:PORT, got {text!r}") from None
    if not host or not 1 <= port <= 65535:
        raise ValueError(f"expected HOST:PORT with a port in [1, 65535], got {text!r}")
    return host, port
