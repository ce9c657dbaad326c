"""Policy server exposure and limits, over real 127.0.0.1 sockets (nothing binds elsewhere):
token in the handshake, no public bind without a token, message and image size limits, one client
at a time, dead clients dropped by keep-alive pings."""
from __future__ import annotations

import base64
import os
import socket

import msgpack
import pytest

from controller.policy_server.client import PolicyServerError, RemoteChunkPolicy
from controller.policy_server.protocol import TOKEN_ENV_VAR, packb, unpackb
from controller.policy_server.server import PolicyServer
from inference_utils.net_security import bearer_token_matches, check_bind
from tests.controller.policy_server.conftest import (ask, one_torch_thread, raw_client,  # noqa: F401
                                                     raw_client_when_free, raw_obs, requires_checkpoint, served,
                                                     start_server)

TOKEN = "correct horse battery staple"


# ---------------------------------------------------------------------------------------- binding
@pytest.mark.parametrize("host", ["0.0.0.0", "::", "", "192.168.1.20", "robot-pc.local"])
def test_non_loopback_bind_without_token_is_refused(host):
    with pytest.raises(ValueError, match=TOKEN_ENV_VAR) as err:
        check_bind(host, None, TOKEN_ENV_VAR, "the policy server")
    assert "not a loopback address" in str(err.value) and "policy server" in str(err.value)
    check_bind(host, "a-secret", TOKEN_ENV_VAR, "the policy server")  # fine with a token


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "::1"])
def test_loopback_bind_needs_no_token(host):
    check_bind(host, None, TOKEN_ENV_VAR, "the policy server")


def test_server_object_refuses_public_bind_without_token():
    class Dummy:  # never reaches the policy: the bind check comes first
        def info(self):
            raise AssertionError("must not be reached")

    with pytest.raises(ValueError, match=TOKEN_ENV_VAR):
        PolicyServer(Dummy(), "0.0.0.0", 0)


def test_cli_refuses_public_bind_without_token_env_before_loading(monkeypatch, capsys):
    from controller import serve

    monkeypatch.delenv(TOKEN_ENV_VAR, raising=False)
    assert serve.main(["--checkpoint", "/nonexistent", "--host", "0.0.0.0", "--port", "1"]) == 2
    err = capsys.readouterr().err
    assert TOKEN_ENV_VAR in err and "/nonexistent" not in err  # refused before any loading
    with pytest.raises(SystemExit):  # the token is never a command-line option
        serve.build_parser().parse_args(["--checkpoint", "x", "--token", TOKEN])


def test_client_refuses_a_remote_host_without_token(monkeypatch):
    monkeypatch.delenv(TOKEN_ENV_VAR, raising=False)
    with pytest.raises(ValueError, match=TOKEN_ENV_VAR):
        RemoteChunkPolicy("192.0.2.1", 8765, connect=False)


def test_bearer_token_comparison():
    assert bearer_token_matches(f"Bearer {TOKEN}", TOKEN) and bearer_token_matches(f"bearer  {TOKEN} ", TOKEN)
    for header in (None, "", TOKEN, f"Basic {TOKEN}", f"Bearer {TOKEN}x", "Bearer "):
        assert not bearer_token_matches(header, TOKEN)


# ---------------------------------------------------------------------------------------- token
@requires_checkpoint
def test_wrong_or_missing_token_is_refused_in_the_handshake(start_server, raw_obs, monkeypatch):
    from websockets.exceptions import InvalidStatus

    server = start_server(token=TOKEN)
    monkeypatch.delenv(TOKEN_ENV_VAR, raising=False)
    for token in (None, "wrong", TOKEN[:-1]):
        with pytest.raises(PolicyServerError, match="refused the token") as err:
            RemoteChunkPolicy(port=server.port, token=token)
        assert err.value.kind == "unauthorized"
    basic = "Basic " + base64.b64encode(f"user:{TOKEN}".encode()).decode()
    with pytest.raises(InvalidStatus) as status:
        raw_client(server, additional_headers={"Authorization": basic})
    assert status.value.response.status_code == 401
    with pytest.raises(InvalidStatus) as status:  # a second Authorization header is not ignored
        raw_client(server, additional_headers=[("Authorization", f"Bearer {TOKEN}"), ("Authorization", "Bearer x")])
    assert status.value.response.status_code == 401
    assert server.stats["connections"] == 0 and server.stats["refused_handshakes"] == 5
    monkeypatch.setenv(TOKEN_ENV_VAR, TOKEN)  # the client reads the token from the environment
    with RemoteChunkPolicy(port=server.port) as remote:
        assert remote.metadata["token_required"] is True
        assert remote.predict_chunk(raw_obs(120, 160)).shape == (64, 13)


# ---------------------------------------------------------------------------------------- sizes
@requires_checkpoint
def test_oversized_message_is_refused(start_server, raw_obs):
    from websockets.exceptions import ConnectionClosed

    server = start_server(max_message_bytes=1 << 20)
    ws, meta = raw_client(server, max_size=None)
    assert meta["limits"]["max_message_bytes"] == 1 << 20
    with pytest.raises(ConnectionClosed) as closed:
        ask(ws, {"obs": raw_obs(480, 640)})  # 2.2 MB
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009  # message too big
    ws, _ = raw_client_when_free(server)  # the server itself carries on
    try:
        assert ask(ws, {"obs": raw_obs(240, 320), "request_id": 1})["actions"].shape == (64, 13)
    finally:
        ws.close()


@requires_checkpoint
def test_oversized_image_is_refused_before_allocation(start_server, raw_obs):
    server = start_server(max_image_pixels=320 * 240)
    ws, _ = raw_client(server)
    try:
        reply = ask(ws, {"obs": raw_obs(480, 640), "request_id": 1})
        assert reply["error"]["type"] == "image_too_large" and "480x640" in reply["error"]["message"]
        # a header declaring a gigapixel image with a few bytes of data: refused from the shape alone
        bomb = {"__ndarray__": 1, "dtype": "|u1", "shape": [50000, 50000, 4], "data": b"\0" * 64}
        small = raw_obs(240, 320)
        msg = unpackb(packb({"obs": small, "request_id": 2}))
        msg["obs"]["rgbm"] = bomb
        reply = ask(ws, msgpack.packb(msg, use_bin_type=True))
        assert reply["error"]["type"] == "image_too_large" and reply["request_id"] == 2
        assert ask(ws, {"obs": small, "request_id": 3})["actions"].shape == (64, 13)  # still serving
    finally:
        ws.close()


# ---------------------------------------------------------------------------------------- clients
@requires_checkpoint
def test_one_client_at_a_time(start_server):
    from websockets.exceptions import InvalidStatus

    server = start_server()
    first, _ = raw_client(server)
    with pytest.raises(InvalidStatus) as status:
        raw_client(server)
    assert status.value.response.status_code == 503
    first.close()
    second, _ = raw_client_when_free(server)  # the slot frees once the server has seen the close
    second.close()


def _silent_websocket(port: int) -> socket.socket:
    """Complete a websocket handshake by hand, then never read or answer anything (a hung client)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall((f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                  f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
    response = b""
    while b"\r\n\r\n" not in response:
        response += sock.recv(4096)
    assert response.startswith(b"HTTP/1.1 101")
    return sock


@requires_checkpoint
def test_dead_client_is_dropped_by_keepalive(start_server):
    from websockets.exceptions import InvalidStatus

    server = start_server(ping_interval_s=0.2, ping_timeout_s=0.3)
    hung = _silent_websocket(server.port)
    try:
        with pytest.raises(InvalidStatus):  # the hung client holds the only slot...
            raw_client(server)
        ws, _ = raw_client_when_free(server)  # ...until the unanswered pings drop it
        ws.close()
        assert server.stats["refused_handshakes"] >= 1 and server.stats["connections"] == 2
    finally:
        hung.close()
