"""Fixtures of the policy-server tests: the shipped sim checkpoint served over real loopback sockets.

``served()`` loads ``assets/controller_small_sim`` once per session (a :class:`ServedPolicy`);
``start_server(**limits)`` runs a :class:`PolicyServer` on a free 127.0.0.1 port in a thread for
the test's duration; ``raw_obs()`` is a camera-sized raw observation.
"""
from __future__ import annotations

import contextlib
import socket
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[3]
CHECKPOINT = REPO / "assets" / "controller_small_sim"

requires_checkpoint = pytest.mark.skipif(not (CHECKPOINT / "model.safetensors").is_file(),
                                         reason="assets/controller_small_sim is not shipped")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def make_raw_obs(h: int = 480, w: int = 640, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    return {"right_cam_img": rng.integers(0, 256, (h, w, 3), dtype=np.uint8),
            "rgbm": rng.integers(0, 256, (h, w, 4), dtype=np.uint8),
            "right_state": rng.uniform(-0.5, 0.5, 13).astype(np.float32)}


@pytest.fixture(autouse=True)
def one_torch_thread() -> Iterator[None]:
    """Policy calls on one thread: on a shared 2-core machine two OpenMP threads per call made a
    chunk ~10x slower under load. In-process and served chunks then run alike."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def served() -> Callable[[], Any]:
    """Factory: the shipped checkpoint as a ServedPolicy (loaded once)."""
    made: dict = {}

    def factory() -> Any:
        if not (CHECKPOINT / "model.safetensors").is_file():
            pytest.skip("assets/controller_small_sim is not shipped")
        if "policy" not in made:
            from controller.policy_server.server import ServedPolicy

            made["policy"] = ServedPolicy.from_checkpoint(str(CHECKPOINT), "cpu", max_num_samples=8)
        return made["policy"]

    return factory


@pytest.fixture
def start_server(served) -> Iterator[Callable[..., Any]]:
    """Factory: ``start_server(**kwargs)`` -> a running PolicyServer (stopped after the test)."""
    from controller.policy_server.server import PolicyServer

    with contextlib.ExitStack() as stack:
        def factory(**kwargs: Any) -> Any:
            kwargs.setdefault("port", 0)
            server = PolicyServer(served(), "127.0.0.1", **kwargs)
            return stack.enter_context(server.running_in_thread())

        yield factory


@pytest.fixture
def raw_obs() -> Callable[..., dict]:
    return make_raw_obs


def raw_client(server: Any, **kwargs: Any) -> tuple[Any, dict]:
    """A bare websocket to ``server`` and the handshake metadata it sent."""
    from controller.policy_server.client import open_websocket
    from controller.policy_server.protocol import decode_arrays, unpackb

    ws = open_websocket(server.url, open_timeout=10, **kwargs)
    return ws, decode_arrays(unpackb(ws.recv(timeout=10)))


def ask(ws: Any, msg: Any, timeout: float = 60) -> dict:
    """Send a request (a map, or raw bytes/text as is) and decode the reply."""
    from controller.policy_server.protocol import decode_arrays, packb, unpackb

    ws.send(packb(msg) if not isinstance(msg, (bytes, str)) else msg)
    return decode_arrays(unpackb(ws.recv(timeout=timeout)))


def raw_client_when_free(server: Any, timeout_s: float = 15.0, **kwargs: Any) -> tuple[Any, dict]:
    """:func:`raw_client`, retried while the server answers 503 (its one client slot still taken,
    e.g. until it has processed the previous client's close or dropped a silent one)."""
    import time

    from websockets.exceptions import InvalidStatus

    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return raw_client(server, **kwargs)
        except InvalidStatus as exc:
            if exc.response.status_code != 503 or time.monotonic() > deadline:
                raise
            time.sleep(0.05)
