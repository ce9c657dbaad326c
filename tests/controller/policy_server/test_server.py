"""Server + client over real loopback sockets: the remote chunk equals the in-process one, the
handshake describes the model, and refused requests get an error reply on a connection that stays
usable."""
from __future__ import annotations

import http.client

import numpy as np
import pytest
import torch

from controller.policy_server.client import PolicyServerError, RemoteChunkPolicy
from controller.policy_server.protocol import PROTOCOL, PROTOCOL_VERSION, packb
from tests.controller.policy_server.conftest import CHECKPOINT, ask, raw_client, requires_checkpoint

pytestmark = requires_checkpoint


def test_remote_chunks_equal_in_process_chunks_for_the_same_noise(start_server, served, raw_obs):
    from controller.policy.chunk_runner import ChunkPolicy

    server = start_server()
    local = ChunkPolicy.from_checkpoint(str(CHECKPOINT), "cpu", num_samples=2, temporal_ensemble=0.115)
    obs = [raw_obs(seed=s) for s in range(3)]
    with RemoteChunkPolicy(port=server.port, num_samples=2, temporal_ensemble=0.115) as remote:
        for i, o in enumerate(obs):  # global-generator noise, drawn on each side after the same seed
            torch.manual_seed(100 + i)
            want = local.predict_chunk(o)
            torch.manual_seed(100 + i)
            got = remote.predict_chunk(o)
            assert got.dtype == np.float32 and got.shape == (64, 13)
            assert np.array_equal(got, want), i
            local.consumed(6)
            remote.consumed(6)
        noise = torch.randn(2, 64, 13)  # explicit noise, one sample
        assert torch.equal(torch.from_numpy(remote.predict_chunk(obs[0], noise=noise)),
                           torch.from_numpy(local.predict_chunk(obs[0], noise=noise)))
        assert remote.stats["requests"] == remote.stats["replies"] == 4 and remote.stats["connections"] == 1
        assert {"decode_ms", "infer_ms", "server_ms"} <= set(remote.last_timing)
    single = ChunkPolicy(served().base.policy, "cpu", num_samples=1, keep_freed_memory=False)
    with RemoteChunkPolicy(port=server.port, num_samples=1) as remote:
        noise = torch.randn(64, 13)
        assert np.array_equal(remote.predict_chunk(obs[1], noise=noise), single.predict_chunk(obs[1], noise=noise))


def test_handshake_metadata(start_server, served):
    server = start_server(max_image_pixels=640 * 480)
    ws, meta = raw_client(server)
    ws.close()
    assert meta["protocol"] == PROTOCOL and meta["protocol_version"] == PROTOCOL_VERSION
    assert meta["action_horizon"] == 64 and meta["action_dim"] == 13 and meta["state_dim"] == 13
    assert meta["image_size"] == [112, 112] and meta["shape_meta"]["obs"]["rgbm"]["shape"] == [4, 112, 112]
    assert meta["model_id"] == "controller_small_sim" and len(meta["checkpoint_sha256"]) == 64
    assert meta["limits"] == {"max_message_bytes": 32 * 2 ** 20, "max_image_pixels": 640 * 480, "max_clients": 1}
    assert meta["token_required"] is False and meta["max_num_samples"] == 8
    assert meta["policy_class"] == "DexGraspVLAController" and meta["device"] == "cpu"


def test_bad_requests_get_error_replies_and_the_connection_keeps_serving(start_server, raw_obs):
    server = start_server()
    good = raw_obs(240, 320)
    bad_shape = {**good, "rgbm": good["rgbm"][..., :3]}
    wrong_dtype = {**good, "right_cam_img": good["right_cam_img"].astype(np.float32)}
    missing = {k: v for k, v in good.items() if k != "right_state"}
    ws, _ = raw_client(server)
    try:
        for i, (obs, kind, field) in enumerate([(bad_shape, "bad_observation", "rgbm"),
                                                (wrong_dtype, "bad_observation", "uint8"),
                                                (missing, "bad_observation", "right_state")]):
            reply = ask(ws, {"obs": obs, "request_id": f"bad-{i}"})
            assert reply["request_id"] == f"bad-{i}" and "actions" not in reply
            assert reply["error"]["type"] == kind and field in reply["error"]["message"]
            ok = ask(ws, {"obs": good, "request_id": i})  # the next good request is served
            assert ok["request_id"] == i and ok["actions"].shape == (64, 13) and np.isfinite(ok["actions"]).all()
        for junk, kind in (("a text frame", "bad_message"), (b"\xc1", "bad_message"), (packb([1, 2]), "bad_request"),
                           (packb({"obs": good, "noise": np.zeros(3, np.float32)}), "bad_noise")):
            assert ask(ws, junk)["error"]["type"] == kind
        assert ask(ws, {"obs": good, "num_samples": 3})["actions"].shape == (64, 13)
    finally:
        ws.close()
    assert server.stats["error_replies"] == 7 and server.stats["connections"] == 1


def test_client_raises_error_replies_and_stays_connected(start_server, raw_obs):
    server = start_server()
    with RemoteChunkPolicy(port=server.port) as remote:
        bad = raw_obs(240, 320)
        bad["right_state"] = np.zeros(7, np.float32)
        with pytest.raises(PolicyServerError, match="right_state") as err:
            remote.predict_chunk(bad)
        assert err.value.kind == "bad_observation"
        assert remote.predict_chunk(raw_obs(240, 320)).shape == (64, 13)
        assert remote.stats["connections"] == 1 and remote.stats["reconnect_attempts"] == 0


def test_health_check_needs_no_websocket(start_server):
    server = start_server(token="s3cret")
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
    conn.request("GET", "/healthz")
    response = conn.getresponse()
    assert response.status == 200 and response.read() == b"OK\n"
