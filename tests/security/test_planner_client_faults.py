"""The planner client against real, faulty HTTP servers on 127.0.0.1.

Each test starts a plain ``http.server`` in a thread whose replies follow a script (HTML instead
of JSON, truncated or empty bodies, HTTP errors, dropped connections, a server trickling one byte
per 0.5 s), points ``DexGraspVLAPlanner`` at it and checks the error, the retries (counted on the
server) and the attempt count. Slow-server tests bound the bytes the server managed to send
before the client closed the connection, never the test's own wall-clock time.

Also here: the verdict parser's table, and checks that every verdict goes through it.
"""

from __future__ import annotations

import ast
import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import pytest
import yaml

from planner import DexGraspVLAPlanner, PlannerError
from planner.parsing import ReplyParseError, parse_verdict

pytestmark = pytest.mark.timeout(180)

REPO = Path(__file__).resolve().parents[2]
IMG = np.full((32, 32, 3), 120, np.uint8)
GOOD_UNDERSTANDING = '{"reasoning": "every object", "targets": ["red cube"], "all_objects": true}'
TRICKLE_PERIOD_S = 0.5
TRICKLE_LIMIT = 40  # the trickling handler gives up by itself after this many bytes (20 s)

Behaviour = Callable[["_Handler"], None]


# ---------------------------------------------------------------------- the fault server
class FaultServer:
    """A loopback HTTP server answering hit ``i`` with ``script[min(i, len(script) - 1)]``.

    Records every hit and, for trickling behaviours, how many bytes each connection managed to
    send before the client closed it.
    """

    def __init__(self, script: list[Behaviour]) -> None:
        self.script = script
        self.hits: list[tuple[str, str]] = []
        self.bodies: list[bytes] = []
        self.auth: list[str] = []
        self.trickled: list[int] = []
        self._active = 0
        self._cond = threading.Condition()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self.httpd.daemon_threads = True
        self.httpd.owner = self  # type: ignore[attr-defined]
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self._thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def __enter__(self) -> "FaultServer":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self._thread.join(10)

    def begin(self, handler: "_Handler", body: bytes) -> Behaviour:
        """Record a hit; return the behaviour that answers it."""
        with self._cond:
            self.hits.append((handler.command, handler.path))
            self.bodies.append(body)
            self.auth.append(handler.headers.get("Authorization", ""))
            self._active += 1
            return self.script[min(len(self.hits) - 1, len(self.script) - 1)]

    def end(self) -> None:
        """A handler has returned."""
        with self._cond:
            self._active -= 1
            self._cond.notify_all()

    def wait_idle(self, limit_s: float = 60.0) -> bool:
        """Wait until every handler has returned by itself (True) or ``limit_s`` passed (False)."""
        with self._cond:
            return self._cond.wait_for(lambda: self._active == 0, limit_s)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def _serve(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        owner: FaultServer = self.server.owner  # type: ignore[attr-defined]
        behaviour = owner.begin(self, body)
        try:
            behaviour(self)
        except OSError:
            pass
        finally:
            self.close_connection = True
            owner.end()

    do_GET = do_POST = _serve

    def log_message(self, *args: object) -> None:
        """Silence the per-request stderr lines."""


def reply(status: int, body: bytes, content_type: str = "application/json", headers: tuple = ()) -> Behaviour:
    """Answer with a complete response."""

    def act(h: _Handler) -> None:
        h.send_response(status)
        h.send_header("Content-Type", content_type)
        h.send_header("Content-Length", str(len(body)))
        h.send_header("Connection", "close")
        for name, value in headers:
            h.send_header(name, value)
        h.end_headers()
        h.wfile.write(body)
        h.wfile.flush()

    return act


def completion_body(content: str) -> bytes:
    """An OpenAI chat completion whose assistant message is ``content``."""
    return json.dumps({
        "id": "x", "object": "chat.completion", "created": 0, "model": "m",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
    }).encode()


def completion(content: str) -> Behaviour:
    """Answer 200 with a chat completion."""
    return reply(200, completion_body(content))


def drop(h: _Handler) -> None:
    """Close the connection without answering."""
    h.close_connection = True


def _trickle(h: _Handler, data: bytes) -> None:
    owner: FaultServer = h.server.owner  # type: ignore[attr-defined]
    sent = 0
    try:
        for byte in data[:TRICKLE_LIMIT]:
            time.sleep(TRICKLE_PERIOD_S)
            h.wfile.write(bytes([byte]))
            h.wfile.flush()
            sent += 1
    except OSError:  # the client closed the connection: stop
        pass
    finally:
        with owner._cond:
            owner.trickled.append(sent)


def trickle_body(h: _Handler) -> None:
    """Send the headers at once, then a (valid) body one byte per ``TRICKLE_PERIOD_S``."""
    body = completion_body(GOOD_UNDERSTANDING)
    h.send_response(200)
    h.send_header("Content-Type", "application/json")
    h.send_header("Content-Length", str(len(body)))
    h.end_headers()
    h.wfile.flush()
    _trickle(h, body)


def trickle_headers(h: _Handler) -> None:
    """Send the status line, then the header section one byte per ``TRICKLE_PERIOD_S``."""
    h.wfile.write(b"HTTP/1.1 200 OK\r\n")
    h.wfile.flush()
    _trickle(h, b"X-Slow: " + b"a" * 200)


@pytest.fixture
def fault_server() -> Iterator[Callable[..., FaultServer]]:
    """Factory: ``fault_server(behaviour, ...)`` starts a server with that script."""
    servers: list[FaultServer] = []

    def start(*script: Behaviour) -> FaultServer:
        server = FaultServer(list(script)).__enter__()
        servers.append(server)
        return server

    yield start
    for server in servers:
        assert server.wait_idle(), "a server handler did not stop by itself"
        server.__exit__()


def make(url: str, **kwargs) -> DexGraspVLAPlanner:
    """A planner with a fixed model name and tiny backoff."""
    kwargs.setdefault("model_name", "m")
    kwargs.setdefault("timeout", 10.0)
    kwargs.setdefault("backoff_s", 0.01)
    kwargs.setdefault("max_backoff_s", 0.05)
    return DexGraspVLAPlanner(url, **kwargs)


# ---------------------------------------------------------------------- bodies that are not JSON
LONG_HTML = b"<html><body>" + b"Bad gateway. " * 400 + b"</body></html>"
TRUNCATED = completion_body(GOOD_UNDERSTANDING)[:37]


@pytest.mark.parametrize("body,content_type,head", [
    (b"<html>Bad gateway</html>", "text/html", repr("<html>Bad gateway</html>")),
    (TRUNCATED, "application/json", repr(TRUNCATED.decode())),
    (b"", "application/json", repr("")),
    (b'{"object": "list", "data": []}', "application/json", repr('{"object": "list", "data": []}')),
    (LONG_HTML, "text/html", repr(LONG_HTML.decode()[:200]) + "..."),
], ids=["html", "truncated_json", "empty", "json_not_a_completion", "long_html"])
def test_non_json_body_is_planner_error_retried_and_counted(fault_server, tmp_path, body, content_type, head):
    server = fault_server(reply(200, body, content_type))
    planner = make(server.url, max_retries=2, episode_dir=tmp_path)
    with pytest.raises(PlannerError) as err:
        planner.understand_prompt("clear the table")
    error = err.value
    assert len(server.hits) == 3  # the first try and max_retries=2 retries
    assert error.kind == "bad_body" and error.status == 200 and error.retryable
    assert error.body_head == head and head in str(error)
    assert "HTTP 200" in str(error) and "after 3 attempt(s)" in str(error)
    assert error.attempts == 3 == planner.last_attempts
    record = planner.logger.read()[-1]
    assert record["attempts"] == 3 and record["error"] == str(error)


def test_oversized_body_refused(fault_server):
    server = fault_server(reply(200, b"{" + b" " * 5000 + b"}"))
    planner = make(server.url, max_retries=1, max_response_bytes=1000)
    with pytest.raises(PlannerError, match="larger than 1000 bytes") as err:
        planner.understand_prompt("clear the table")
    assert err.value.kind == "bad_body" and len(server.hits) == 2


# ---------------------------------------------------------------------- deadlines
@pytest.mark.parametrize("behaviour", [trickle_body, trickle_headers], ids=["body", "headers"])
def test_trickling_server_stopped_at_the_deadline(fault_server, behaviour):
    server = fault_server(behaviour)
    planner = make(server.url, timeout=2.0, max_retries=0)
    with pytest.raises(PlannerError, match="timed out") as err:
        planner.understand_prompt("clear the table")
    assert err.value.kind == "timeout" and err.value.attempts == 1
    assert err.value.status == (200 if behaviour is trickle_body else None)
    assert server.wait_idle(), "the trickling handler did not stop by itself"
    assert len(server.hits) == 1 and len(server.trickled) == 1
    # 2 s at one byte per 0.5 s is ~4 bytes (+1-2 written before the server notices the close).
    assert server.trickled[0] < 10, server.trickled


def test_overall_deadline_across_retries(fault_server):
    server = fault_server(trickle_body)
    planner = make(server.url, timeout=1.5, total_timeout=2.5, max_retries=5)
    with pytest.raises(PlannerError, match="overall deadline of 2.5 s") as err:
        planner.understand_prompt("clear the table")
    assert err.value.kind == "deadline" and err.value.attempts == 2 == len(server.hits)
    assert server.wait_idle()
    assert sum(server.trickled) < 10, server.trickled


def test_total_timeout_default_is_the_natural_bound():
    planner = make("http://127.0.0.1:9/v1", timeout=2.0, max_retries=2, parse_retries=1, max_backoff_s=0.5)
    assert planner.total_timeout == pytest.approx(2.0 * 4 + 0.5 * 3)
    for bad in (0, -1, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="timeout"):
            make("http://127.0.0.1:9/v1", timeout=bad)


# ---------------------------------------------------------------------- statuses and retries
@pytest.mark.parametrize("status", [500, 502, 503, 408, 429])
def test_retryable_status_then_success_on_attempt_2(fault_server, tmp_path, status):
    server = fault_server(reply(status, b'{"error": {"message": "busy"}}', headers=(("Retry-After", "0"),)),
                          completion(GOOD_UNDERSTANDING))
    planner = make(server.url, max_retries=3, episode_dir=tmp_path)
    result = planner.understand_prompt("clear the table")
    assert result.all_objects is True and result.targets == ["red cube"]
    assert len(server.hits) == 2 and planner.last_attempts == 2
    assert planner.logger.read()[-1]["attempts"] == 2


@pytest.mark.parametrize("status", [400, 401, 403, 404, 422])
def test_client_error_not_retried(fault_server, status):
    body = b'{"error": {"message": "bad request: messages[0] is invalid", "type": "invalid_request_error"}}'
    server = fault_server(reply(status, body), completion(GOOD_UNDERSTANDING))
    planner = make(server.url, max_retries=3)
    with pytest.raises(PlannerError) as err:
        planner.understand_prompt("clear the table")
    error = err.value
    assert len(server.hits) == 1
    assert error.kind == "http_status" and error.status == status and not error.retryable
    assert f"HTTP {status}" in str(error) and "messages[0] is invalid" in str(error)
    assert error.body_head == repr(body.decode()) and "after 1 attempt(s)" in str(error)


def test_dropped_connection_retried(fault_server):
    server = fault_server(drop, completion(GOOD_UNDERSTANDING))
    planner = make(server.url, max_retries=1)
    assert planner.understand_prompt("clear the table").targets == ["red cube"]
    assert len(server.hits) == 2 and planner.last_attempts == 2


def test_model_discovery_garbage_is_planner_error(fault_server):
    server = fault_server(reply(200, b"<html>login page</html>", "text/html"))
    planner = make(server.url, model_name=None, max_retries=1)
    with pytest.raises(PlannerError, match="listing models failed after 2 attempt") as err:
        _ = planner.model_name
    assert err.value.status == 200 and "login page" in str(err.value)
    assert server.hits == [("GET", "/v1/models")] * 2


def test_echoed_api_key_is_masked(fault_server, monkeypatch):
    monkeypatch.setenv("DEXGRASPVLA_PLANNER_API_KEY", "sk-secret-0123456789")
    server = fault_server(reply(401, b'{"error": {"message": "key sk-secret-0123456789 is revoked"}}'))
    planner = make(server.url)
    with pytest.raises(PlannerError) as err:
        planner.understand_prompt("clear the table")
    assert server.auth == ["Bearer sk-secret-0123456789"]
    assert "sk-secret" not in str(err.value) and "***" in err.value.body_head


# ---------------------------------------------------------------------- API key sources
def test_api_key_only_from_environment(fault_server, monkeypatch):
    for path in sorted((REPO / "inference_utils" / "config" / "planner").glob("*.yaml")):
        cfg = yaml.safe_load(path.read_text())
        assert "api_key" not in cfg, f"{path.name}: a key slot in a config file"
        assert re.fullmatch(r"[A-Z_][A-Z0-9_]*", cfg["api_key_env"]), path.name
    server = fault_server(completion(GOOD_UNDERSTANDING))
    with pytest.raises(ValueError, match="not read from config files"):
        DexGraspVLAPlanner.from_config({"base_url": server.url, "api_key": "sk-in-a-file"})
    with pytest.raises(ValueError, match="NAME of an environment variable"):
        DexGraspVLAPlanner.from_config({"base_url": server.url, "api_key_env": "sk-live-1234"})
    monkeypatch.setenv("MY_VLM_KEY", "sk-from-env")
    planner = DexGraspVLAPlanner.from_config({"base_url": server.url, "model_name": "m", "api_key_env": "MY_VLM_KEY",
                                              "timeout_s": 5, "total_timeout_s": 7, "max_retries": 1})
    assert planner.timeout == 5 and planner.total_timeout == 7 and planner.max_retries == 1
    planner.understand_prompt("clear the table")
    assert server.auth[-1] == "Bearer sk-from-env"


# ---------------------------------------------------------------------- verdicts
VERDICTS = [
    ('{"success": true}', "success", True),
    ('{"success": false}', "success", False),
    ('{"reasoning": "it is not true", "success": false}', "success", False),
    ('```json\n{"reasoning": "held", "success": true}\n```', "success", True),
    ('{"done": "True"}', "done", True),
    ('{"done": "no"}', "done", False),
    ('{"done": "Yes."}', "done", True),
    ('{"done": "**NO**"}', "done", False),
    ("{'all_objects': true, 'targets': []}", "all_objects", True),
    ("Yes", "success", True),
    ("yes.", "success", True),
    ("Yes.", "success", True),
    ("No.", "success", False),
    ("**Yes**", "success", True),
    ("**No.**", "done", False),
    ("`true`", "done", True),
    ("FALSE!", "done", False),
    ('"yes"', "success", True),
    ("The cube is lifted.\nVerdict: Yes", "success", True),
    ("reasoning...\nFinal verdict: no", "done", False),
    ("Looks held.\n**Verdict:** True.", "success", True),
    ("The table is empty.\n**Final answer:** **No**", "done", False),
    ("Everything.\nall objects: yes", "all_objects", True),
    ("Nothing left.\n- done = true", "done", True),
    ("Held firmly.\nSuccess: No", "success", False),
    ("> Answer: yes", "success", True),
    ('{"success": true}\nVerdict: true', "success", True),
]
AMBIGUOUS = [
    ("", "success"),
    ("It is true that the object was lifted", "success"),
    ("Yes, but it may slip", "success"),
    ("Yes?", "success"),
    ("maybe", "success"),
    ("Yes. No.", "success"),
    ("not yes", "success"),
    ('{"success": "maybe"}', "success"),
    ('{"success": 1}', "success"),
    ('{"success": null}', "success"),
    ('{"reasoning": "held"}', "success"),
    ('{"success": true}\nVerdict: no', "success"),
    ("Verdict: yes\nThe hand is empty though.", "success"),
    ("Verdict: yes and no", "success"),
    ('{"done": true}', "success"),
    ("The hand is closed.\ndone: yes", "success"),
    ("Success: yes", "done"),
]


@pytest.mark.parametrize("text,key,expected", VERDICTS)
def test_verdict_table(text, key, expected):
    assert parse_verdict(text, key)[0] is expected


@pytest.mark.parametrize("text,key", AMBIGUOUS)
def test_ambiguous_verdict_raises(text, key):
    with pytest.raises(ReplyParseError):
        parse_verdict(text, key)


def test_ambiguous_verdict_is_asked_again_never_false(fault_server):
    server = fault_server(completion("The grasp looks fine, I think."), completion('{"success": "maybe"}'),
                          completion("**Yes.**"))
    assert make(server.url, parse_retries=2).verify_grasp("grasp the cube", IMG, IMG).success is True
    assert len(server.hits) == 3
    server = fault_server(completion("Possibly."))
    with pytest.raises(PlannerError, match="unusable reply after 2 attempt") as err:
        make(server.url, parse_retries=1).check_completion("clear the table", IMG, IMG)
    assert err.value.kind == "bad_reply" and err.value.reply == "Possibly." and len(server.hits) == 2


def test_every_verdict_goes_through_parse_verdict(fault_server, monkeypatch, tmp_path):
    """Behaviour: the client's three verdicts, and the runtime Agent's, call ``parse_verdict``."""
    import planner.client as client
    from inference_utils.runtime.agent import Agent
    from inference_utils.runtime.episode_log import EpisodeLog

    keys: list[str] = []

    def spy(text: str, key: str):
        keys.append(key)
        return parse_verdict(text, key)

    monkeypatch.setattr(client, "parse_verdict", spy)
    server = fault_server(completion(GOOD_UNDERSTANDING), completion("No."), completion("Verdict: yes"),
                          completion("**No**"), completion("Yes."))
    planner = make(server.url)
    assert planner.understand_prompt("clear the table").all_objects is True
    assert planner.verify_grasp("grasp", IMG, IMG).success is False
    assert planner.check_completion("clear the table", IMG, IMG).done is True
    agent = Agent(EpisodeLog(tmp_path, console=False), None, None, None, planner)
    assert agent.verify("grasp", IMG, IMG).success is False
    assert agent.check_completion("clear the table", IMG, IMG).done is True
    assert keys == ["all_objects", "success", "done", "success", "done"]


_VERDICT_WORDS = {"yes", "no", "true", "false", "y", "n"}


def _verdict_literals(node: ast.AST) -> bool:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value.strip().strip(".!").lower() in _VERDICT_WORDS
    if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
        return any(_verdict_literals(e) for e in node.elts)
    return False


def _home_made_verdict_parsing(source: str, label: str) -> list[str]:
    """Lines comparing text with yes/no/true/false words (``==``, ``in``, ``startswith``, ...)."""
    found = []
    for node in ast.walk(ast.parse(source, label)):
        if isinstance(node, ast.Compare) and any(_verdict_literals(n) for n in [node.left, *node.comparators]):
            found.append(f"{label}:{node.lineno}")
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
              and node.func.attr in ("startswith", "endswith") and any(_verdict_literals(a) for a in node.args)):
            found.append(f"{label}:{node.lineno}")
        elif isinstance(node, ast.FunctionDef) and "verdict" in node.name.lower():
            found.append(f"{label}:{node.lineno} defines {node.name}")
    return found


def test_no_other_verdict_parser_in_planner_or_runtime():
    """Source check: outside ``planner/parsing.py`` nothing compares text with yes/no words."""
    files = [p for p in sorted((REPO / "planner").rglob("*.py")) if p != REPO / "planner" / "parsing.py"]
    files += sorted((REPO / "inference_utils" / "runtime").glob("*.py"))
    assert len(files) > 10
    offenders = [hit for path in files for hit in _home_made_verdict_parsing(path.read_text(), str(path))]
    assert offenders == []
    # The detector does catch home-made parsers:
    for snippet in ('ok = reply.strip().lower() == "yes"', 'ok = word in ("true", "yes")',
                    'ok = text.lower().startswith("yes")', "def my_verdict(text):\n    return True"):
        assert _home_made_verdict_parsing(snippet, "probe"), snippet
