"""Request limits of the offline planner server and the emulators, over real loopback sockets.

Covered: decompression-bomb images refused from their header (the decoder is never called),
body caps by Content-Length and for chunked uploads (HTTP 413), undecodable images (HTTP 400),
too many images, the bearer token and the bind-address check, the CLI options, and the arm
emulator's line-length cap.
"""

from __future__ import annotations

import base64
import http.client
import json
import socket
import struct
import zlib
from typing import Any, Iterator

import cv2
import httpx
import numpy as np
import pytest

import planner.server.__main__ as server_cli
from inference_utils.arm_emulator import MAX_LINE_BYTES, ArmEmulator
from inference_utils.devices import realman_protocol as proto
from inference_utils.devices.modbus_server import ModbusTcpRegisterServer, RegisterBank
from inference_utils.hand_emulator import HandEmulator
from planner import DexGraspVLAPlanner
from planner.images import to_data_url
from planner.server import create_app
from planner.server.app import (DEFAULT_MAX_BODY_MB, DEFAULT_MAX_IMAGE_PIXELS, TOKEN_ENV_VAR, check_bind,
                                is_loopback_host)
from planner.server.background import serve_in_thread
from planner.synthetic import make_scene

pytestmark = pytest.mark.timeout(120)

SMALL_BODY_MB = 0.25
SMALL_BODY_BYTES = int(SMALL_BODY_MB * 1024 * 1024)
TOKEN = "test-token-3f9c"
PROMPT = "Task: understand_prompt\nUser prompt: clear the table\n"


# ----------------------------------------------------------------------------- helpers
def png_1bit(width: int, height: int) -> bytes:
    """A valid all-black 1-bit greyscale PNG built row by row (no width x height array in memory)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    row = b"\x00" + bytes((width + 7) // 8)  # filter byte 0 + packed zero bits
    packer = zlib.compressobj(9)
    idat = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def data_url(raw: bytes, fmt: str = "png") -> str:
    """``data:image/<fmt>;base64,...`` for raw bytes."""
    return f"data:image/{fmt};base64," + base64.b64encode(raw).decode("ascii")


def chat_body(*image_urls: str, text: str = PROMPT) -> dict:
    """An OpenAI chat request: one user message with the text and the images."""
    content: list[dict[str, Any]] = [{"type": "text", "text": text}]
    content += [{"type": "image_url", "image_url": {"url": url}} for url in image_urls]
    return {"model": "dexgraspvla-offline-planner", "messages": [{"role": "user", "content": content}]}


def assert_openai_error(response: httpx.Response, status: int) -> dict:
    """Check the status and the OpenAI error shape; return the ``error`` object."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    error = response.json()["error"]
    assert isinstance(error["message"], str) and error["message"]
    assert isinstance(error["type"], str) and error["type"]
    return error


def raw_post(base_url: str, headers: dict[str, str], body_parts: Iterator[bytes]) -> tuple[int, dict]:
    """POST /v1/chat/completions sending ``body_parts`` one by one, then read the reply.

    Sending stops early if the server already closed the connection. Returns (status, JSON).
    """
    host, port = base_url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=15)
    try:
        conn.putrequest("POST", "/v1/chat/completions", skip_accept_encoding=True)
        for name, value in headers.items():
            conn.putheader(name, value)
        conn.endheaders()
        for part in body_parts:
            try:
                conn.send(part)
            except (BrokenPipeError, ConnectionResetError):
                break
        response = conn.getresponse()
        return response.status, json.loads(response.read())
    finally:
        conn.close()


def chunked(payload: bytes, size: int = 16 * 1024, terminate: bool = True) -> Iterator[bytes]:
    """``payload`` in HTTP/1.1 chunked transfer coding (optionally without the final 0-chunk)."""
    for start in range(0, len(payload), size):
        piece = payload[start:start + size]
        yield b"%x\r\n" % len(piece) + piece + b"\r\n"
    if terminate:
        yield b"0\r\n\r\n"


@pytest.fixture
def decoder_calls(monkeypatch) -> list[int]:
    """Records every ``cv2.imdecode`` call (the servers run in this process, in threads)."""
    calls: list[int] = []
    original = cv2.imdecode

    def spy(buf, flags):
        calls.append(len(buf))
        return original(buf, flags)

    monkeypatch.setattr(cv2, "imdecode", spy)
    return calls


@pytest.fixture(scope="module")
def default_url() -> Iterator[str]:
    """A server with the default limits."""
    with serve_in_thread(create_app()) as url:
        yield url


@pytest.fixture(scope="module")
def small_url() -> Iterator[str]:
    """A server with a 0.25 MB body cap and a 10_000-pixel image cap."""
    with serve_in_thread(create_app(max_body_mb=SMALL_BODY_MB, max_image_pixels=10_000, max_images=3)) as url:
        yield url


@pytest.fixture(scope="module")
def token_url() -> Iterator[str]:
    """A server that requires ``Authorization: Bearer TOKEN``."""
    with serve_in_thread(create_app(api_token=TOKEN)) as url:
        yield url


# ----------------------------------------------------------------------------- images
def test_bomb_png_is_small_but_huge_when_decoded():
    bomb = png_1bit(8000, 8000)
    assert len(bomb) < 300_000  # a few KB on the wire, 8000 x 8000 x 3 = 192 MB once decoded
    small = cv2.imdecode(np.frombuffer(png_1bit(64, 48), np.uint8), cv2.IMREAD_COLOR)
    assert small.shape == (48, 64, 3) and not small.any()  # the builder makes valid PNGs


def test_decompression_bomb_rejected_from_header(default_url, decoder_calls):
    bomb = png_1bit(8000, 8000)
    reply = httpx.post(default_url + "/v1/chat/completions", json=chat_body(data_url(bomb)), timeout=30)
    error = assert_openai_error(reply, 400)
    assert error["code"] == "image_too_large"
    assert "8000x8000" in error["message"] and str(DEFAULT_MAX_IMAGE_PIXELS) in error["message"]
    assert "header" in error["message"] and "not decoded" in error["message"]
    assert error["param"] == "messages[0].content[1].image_url"
    assert decoder_calls == []  # never handed to the decoder


def test_oversized_jpeg_rejected_from_header(small_url, decoder_calls):
    ok, buf = cv2.imencode(".jpg", np.zeros((120, 200, 3), np.uint8))  # 24_000 px > 10_000
    assert ok
    reply = httpx.post(small_url + "/v1/chat/completions", json=chat_body(data_url(buf.tobytes(), "jpeg")))
    error = assert_openai_error(reply, 400)
    assert "200x120" in error["message"] and "10000" in error["message"]
    assert decoder_calls == []


@pytest.mark.parametrize("raw,words", [
    (b"this is certainly not an image", "not a PNG, JPEG"),
    (b"", "empty"),
    (png_1bit(64, 48)[:40], "could not be decoded"),  # valid header, truncated data
    (b"\xff\xd8\xff\xe0\x00\x10JFIF\x00", "JPEG"),     # JPEG start without a frame header
])
def test_undecodable_images_are_400(default_url, raw, words):
    reply = httpx.post(default_url + "/v1/chat/completions", json=chat_body(data_url(raw)))
    error = assert_openai_error(reply, 400)
    assert error["code"] == "invalid_image"
    assert words in error["message"]


def test_not_a_data_url_is_400(default_url):
    reply = httpx.post(default_url + "/v1/chat/completions", json=chat_body("https://example.com/a.png"))
    assert "base64 data URL" in assert_openai_error(reply, 400)["message"]


def test_too_many_images_is_400(small_url, decoder_calls):
    tiny = data_url(png_1bit(8, 8))
    reply = httpx.post(small_url + "/v1/chat/completions", json=chat_body(*[tiny] * 4))
    error = assert_openai_error(reply, 400)
    assert error["code"] == "too_many_images" and "3 images" in error["message"]
    assert len(decoder_calls) == 3  # the fourth was never decoded


def test_normal_small_request_still_works(default_url, decoder_calls):
    reply = httpx.post(default_url + "/v1/chat/completions", json=chat_body(data_url(png_1bit(64, 48))))
    assert reply.status_code == 200, reply.text
    assert reply.json()["object"] == "chat.completion"
    assert len(decoder_calls) == 1
    scene = make_scene(3, n_objects=3)
    with DexGraspVLAPlanner(default_url + "/v1", timeout=30, max_retries=0) as planner:
        understood = planner.understand_prompt("clear the table", scene.image)
    assert understood.all_objects is True and len(understood.targets) == 3


def test_image_under_the_limit_with_other_formats(small_url):
    image = np.random.default_rng(0).integers(0, 255, (40, 50, 3), dtype=np.uint8)
    for fmt in ("png", "jpeg"):
        reply = httpx.post(small_url + "/v1/chat/completions", json=chat_body(to_data_url(image, fmt)))
        assert reply.status_code == 200, reply.text


# ----------------------------------------------------------------------------- body size
def test_content_length_over_cap_is_413_before_the_body_is_read(small_url):
    # Only 1 KB of the announced body is sent: the answer must come from the header alone.
    status, body = raw_post(small_url, {"Content-Type": "application/json",
                                        "Content-Length": str(SMALL_BODY_BYTES + 1)}, iter([b"{" * 1024]))
    assert status == 413
    assert body["error"]["code"] == "request_too_large"
    assert str(SMALL_BODY_BYTES) in body["error"]["message"]


def test_default_body_cap_is_8_mb(default_url):
    cap = int(DEFAULT_MAX_BODY_MB * 1024 * 1024)
    assert cap == 8 * 1024 * 1024
    status, body = raw_post(default_url, {"Content-Type": "application/json", "Content-Length": str(cap + 1)},
                            iter([b"{"]))
    assert status == 413 and "8 MB" in body["error"]["message"]


def test_chunked_body_over_cap_is_413(small_url):
    # No Content-Length and no final 0-chunk: the server must stop reading at the cap by itself.
    payload = b" " * (SMALL_BODY_BYTES + 32 * 1024)
    status, body = raw_post(small_url, {"Content-Type": "application/json", "Transfer-Encoding": "chunked"},
                            chunked(payload, terminate=False))
    assert status == 413
    assert body["error"]["type"] == "invalid_request_error" and body["error"]["code"] == "request_too_large"


def test_bodies_under_the_cap_pass(small_url):
    padding = "x" * (SMALL_BODY_BYTES - 2000)
    payload = json.dumps(chat_body(text=PROMPT + padding)).encode()
    assert len(payload) < SMALL_BODY_BYTES
    status, body = raw_post(small_url, {"Content-Type": "application/json", "Content-Length": str(len(payload))},
                            iter([payload]))
    assert status == 200, body
    status, body = raw_post(small_url, {"Content-Type": "application/json", "Transfer-Encoding": "chunked"},
                            chunked(payload))
    assert status == 200, body


# ----------------------------------------------------------------------------- token and bind
def test_token_required_when_set(token_url):
    assert httpx.get(token_url + "/health").status_code == 200  # liveness stays open
    error = assert_openai_error(httpx.get(token_url + "/v1/models"), 401)
    assert error["code"] == "invalid_api_key"
    wrong = httpx.get(token_url + "/v1/models", headers={"Authorization": "Bearer nope"})
    assert_openai_error(wrong, 401)
    assert_openai_error(httpx.get(token_url + "/v1/models", headers={"Authorization": f"Basic {TOKEN}"}), 401)
    good = httpx.get(token_url + "/v1/models", headers={"Authorization": f"Bearer {TOKEN}"})
    assert good.status_code == 200
    # unauthenticated clients are refused before their (large) body is read
    status, body = raw_post(token_url, {"Content-Type": "application/json", "Content-Length": "1000000"},
                            iter([b"{"]))
    assert status == 401 and body["error"]["type"] == "authentication_error"
    with DexGraspVLAPlanner(token_url + "/v1", api_key=TOKEN, timeout=30, max_retries=0) as planner:
        assert planner.understand_prompt("clear the table").all_objects is True


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "localhost", "::1", "[::1]"])
def test_loopback_hosts_need_no_token(host):
    assert is_loopback_host(host)
    check_bind(host, None)


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "", "192.168.1.20", "10.0.0.1", "robot-pc.local"])
def test_non_loopback_without_token_refused(host):
    assert not is_loopback_host(host)
    with pytest.raises(ValueError, match=TOKEN_ENV_VAR) as err:
        check_bind(host, None)
    assert "not a loopback address" in str(err.value)
    check_bind(host, "a-secret")  # fine with a token


def test_cli_refuses_public_bind_without_token_env(monkeypatch, capsys):
    monkeypatch.delenv(TOKEN_ENV_VAR, raising=False)
    monkeypatch.setattr(server_cli.uvicorn, "run", lambda *a, **k: pytest.fail("must not start"))
    with pytest.raises(SystemExit) as exc:
        server_cli.main(["--host", "0.0.0.0", "--port", "1"])
    assert exc.value.code == 2
    assert TOKEN_ENV_VAR in capsys.readouterr().err


def test_cli_limits_and_token_reach_the_app(monkeypatch):
    started: dict[str, Any] = {}
    monkeypatch.setattr(server_cli.uvicorn, "run", lambda app, **kw: started.update(app=app, **kw))
    monkeypatch.setenv("MY_PLANNER_TOKEN", TOKEN)
    server_cli.main(["--host", "0.0.0.0", "--port", "1", "--token-env", "MY_PLANNER_TOKEN",
                     "--max-body-mb", "0.5", "--max-image-pixels", "1000", "--max-images", "2"])
    assert started["host"] == "0.0.0.0"  # not bound: uvicorn.run is replaced
    auth = {"Authorization": f"Bearer {TOKEN}"}
    with serve_in_thread(started["app"]) as url:
        assert httpx.get(url + "/v1/models").status_code == 401
        reply = httpx.post(url + "/v1/chat/completions", json=chat_body(data_url(png_1bit(40, 40))), headers=auth)
        assert "1600 pixels" in assert_openai_error(reply, 400)["message"]
        status, _ = raw_post(url, {**auth, "Content-Length": str(512 * 1024 + 1)}, iter([b"{"]))
        assert status == 413


def test_cli_rejects_non_positive_limits(capsys):
    for option in ("--max-body-mb", "--max-image-pixels", "--max-images"):
        with pytest.raises(SystemExit):
            server_cli.build_parser().parse_args([option, "0"])
        assert "expected a positive" in capsys.readouterr().err


# ----------------------------------------------------------------------------- emulators
def test_emulators_bind_loopback_by_default():
    assert ArmEmulator().host == "127.0.0.1"
    assert HandEmulator().host == "127.0.0.1"
    assert ModbusTcpRegisterServer(RegisterBank({0: 1})).host == "127.0.0.1"


def _ask_joints(port: int) -> dict:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(proto.encode({"command": "get_joint_degree"}))
        return json.loads(sock.makefile("rb").readline())


def test_arm_emulator_drops_overlong_line_and_keeps_serving():
    with ArmEmulator(host="127.0.0.1", port=0) as emu:
        with socket.create_connection(("127.0.0.1", emu.port), timeout=5) as sock:
            try:
                sock.sendall(b"a" * (MAX_LINE_BYTES + 4096))  # no newline
                closed = sock.recv(1) == b""
            except ConnectionResetError:
                closed = True
            assert closed, "the emulator must close a connection whose line passes the cap"
        assert _ask_joints(emu.port)["state"] == "joint_degree"
        # a long but capped line is still a message
        padded = json.dumps({"command": "get_joint_degree", "pad": "x" * (MAX_LINE_BYTES - 100)}).encode()
        assert len(padded) + 2 <= MAX_LINE_BYTES
        with socket.create_connection(("127.0.0.1", emu.port), timeout=5) as sock:
            sock.sendall(padded + b"\r\n")
            assert json.loads(sock.makefile("rb").readline())["state"] == "joint_degree"
