"""Policy server overhead: the same chunk in-process and through ``python -m controller.serve``.

    python benchmarks/policy_server.py [--checkpoint assets/controller_small_sim] [--calls 20]
        [--num-samples 4] [--height 480 --width 640] [--threads 1] [--server process|thread]

Starts the server on 127.0.0.1 (a separate process by default, as deployed; ``--server thread``
runs it in this process), then times calls round-robin -- one in-process chunk, one remote chunk,
repeated -- so load changes on a shared machine hit both alike. Both sides use ``--threads``
torch threads and the same noise, and the remote chunks are checked equal to the in-process ones.
Prints, per call (median over ``--calls`` after ``--warmup``):

* in-process chunk time (``ChunkPolicy.predict_chunk``), remote chunk time (client round trip);
* overhead = remote round trip - the server's own inference time (serialisation, validation,
  websocket transfer on loopback, decoding on both sides), and remote - in-process;
* bytes per call (request, reply) and the request's payload transfer time at ``--link-gbps``
  (what a real network adds on top: the target is overhead <= 5 ms + payload transfer).

The observation is camera-sized (the simulator preset's 480x640 frames) with random pixels; the
network's cost does not depend on pixel values. Results also go to ``--out`` as JSON.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def build_parser() -> argparse.ArgumentParser:
    from inference_utils import cli_common  # noqa: PLC0415 - kebab-case flags; old underscore spellings accepted
    p = cli_common.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--checkpoint", default=str(REPO / "assets" / "controller_small_sim"))
    p.add_argument("--calls", type=int, default=20, help="timed calls per side")
    p.add_argument("--warmup", type=int, default=3, help="untimed calls per side first")
    p.add_argument("--num-samples", type=int, default=None,
                   help="chunks averaged per observation (default: controller.policy.defaults)")
    p.add_argument("--height", type=int, default=480)
    p.add_argument("--width", type=int, default=640)
    p.add_argument("--threads", type=int, default=1, help="torch threads on each side (default 1)")
    p.add_argument("--server", choices=("process", "thread"), default="process")
    p.add_argument("--port", type=int, default=0, help="server port (0: a free one)")
    p.add_argument("--link-gbps", type=float, default=1.0, help="link speed for the payload transfer estimate")
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "policy_server.json"))
    return p


def _free_port() -> int:
    import socket  # noqa: PLC0415

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _median_ms(values: list) -> float:
    return statistics.median(values) * 1e3


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.calls < 1 or args.warmup < 0 or args.threads < 1:
        print("error: --calls >= 1, --warmup >= 0, --threads >= 1", file=sys.stderr)
        return 2

    import contextlib  # noqa: PLC0415
    import subprocess  # noqa: PLC0415

    import numpy as np  # noqa: PLC0415
    import torch  # noqa: PLC0415

    from controller.policy import defaults  # noqa: PLC0415
    from controller.policy.chunk_runner import ChunkPolicy  # noqa: PLC0415
    from controller.policy_server.client import RemoteChunkPolicy, wait_for_server  # noqa: PLC0415

    k = args.num_samples or defaults.NUM_SAMPLES
    torch.set_num_threads(args.threads)
    port = args.port or _free_port()
    rng = np.random.default_rng(0)
    obs = {"right_cam_img": rng.integers(0, 256, (args.height, args.width, 3), dtype=np.uint8),
           "rgbm": np.concatenate([rng.integers(0, 256, (args.height, args.width, 3), dtype=np.uint8),
                                   (rng.random((args.height, args.width, 1)) < 0.05).astype(np.uint8) * 255], axis=2),
           "right_state": rng.uniform(-0.5, 0.5, 13).astype(np.float32)}

    with contextlib.ExitStack() as stack:
        t0 = time.perf_counter()
        if args.server == "process":
            env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": str(args.threads)}
            proc = subprocess.Popen([sys.executable, "-m", "controller.serve", "--checkpoint", args.checkpoint,
                                     "--port", str(port), "--device", "cpu", "--max-num-samples", str(max(k, 16)),
                                     "--log-level", "WARNING"], cwd=REPO, env=env)

            def stop() -> None:
                proc.terminate()
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    proc.kill()

            stack.callback(stop)
        else:
            from controller.policy_server.server import PolicyServer, ServedPolicy  # noqa: PLC0415

            served = ServedPolicy.from_checkpoint(args.checkpoint, "cpu", max_num_samples=max(k, 16))
            stack.enter_context(PolicyServer(served, "127.0.0.1", port).running_in_thread())
        local = ChunkPolicy.from_checkpoint(args.checkpoint, "cpu", num_samples=k)
        wait_for_server("127.0.0.1", port, timeout_s=300)
        print(f"server ({args.server}) ready on 127.0.0.1:{port} after {time.perf_counter() - t0:.1f} s")
        remote = stack.enter_context(RemoteChunkPolicy(port=port, num_samples=k, timeout_s=600))
        meta = remote.metadata
        noise_shape = (k, meta["action_horizon"], meta["action_dim"]) if k > 1 else (
            meta["action_horizon"], meta["action_dim"])

        local_s, remote_s, infer_s, decode_s, equal = [], [], [], [], True
        request_bytes = reply_bytes = 0
        for i in range(args.warmup + args.calls):
            noise = torch.randn(noise_shape, generator=torch.Generator().manual_seed(i))
            t = time.perf_counter()
            want = local.predict_chunk(obs, noise=noise)
            t_local = time.perf_counter() - t
            sent, received = remote.stats["bytes_sent"], remote.stats["bytes_received"]
            t = time.perf_counter()
            got = remote.predict_chunk(obs, noise=noise)
            t_remote = time.perf_counter() - t
            equal = equal and bool(np.array_equal(got, want))
            if i >= args.warmup:
                local_s.append(t_local)
                remote_s.append(t_remote)
                infer_s.append(remote.last_timing["infer_ms"] / 1e3)
                decode_s.append(remote.last_timing["decode_ms"] / 1e3)
                reply_bytes = remote.stats["bytes_received"] - received
                request_bytes = remote.stats["bytes_sent"] - sent

    overhead = [r - s for r, s in zip(remote_s, infer_s)]
    transfer_ms = request_bytes * 8 / (args.link_gbps * 1e9) * 1e3
    result = {
        "checkpoint": args.checkpoint, "model_id": meta["model_id"], "server": args.server, "threads": args.threads,
        "num_samples": k, "image_hw": [args.height, args.width], "calls": args.calls,
        "in_process_ms": _median_ms(local_s), "remote_ms": _median_ms(remote_s),
        "server_infer_ms": _median_ms(infer_s), "server_decode_validate_ms": _median_ms(decode_s),
        "overhead_ms": _median_ms(overhead), "overhead_p90_ms": float(np.percentile(overhead, 90) * 1e3),
        "remote_minus_in_process_ms": _median_ms(remote_s) - _median_ms(local_s),
        "request_bytes": request_bytes, "reply_bytes": reply_bytes,
        "payload_transfer_ms_at_link": transfer_ms, "link_gbps": args.link_gbps, "outputs_equal": equal,
    }
    print(f"checkpoint {meta['model_id']} ({args.checkpoint}), {args.height}x{args.width} frames, "
          f"num_samples={k}, {args.threads} torch thread(s) per side, server in a {args.server}, "
          f"{args.calls} calls after {args.warmup} warm-up")
    print(f"  in-process chunk          {result['in_process_ms']:9.2f} ms")
    print(f"  remote chunk (round trip) {result['remote_ms']:9.2f} ms   "
          f"(server inference {result['server_infer_ms']:.2f} ms)")
    print(f"  overhead per call         {result['overhead_ms']:9.2f} ms   (p90 {result['overhead_p90_ms']:.2f} ms; "
          f"server decode+validate {result['server_decode_validate_ms']:.2f} ms)")
    print(f"  remote - in-process       {result['remote_minus_in_process_ms']:9.2f} ms")
    print(f"  bytes per call            {request_bytes:9d} request + {reply_bytes} reply")
    print(f"  payload transfer at {args.link_gbps:g} Gbit/s: {transfer_ms:.2f} ms -> overhead target "
          f"<= {5 + transfer_ms:.2f} ms on such a link (loopback transfer is inside the measured overhead)")
    print(f"  remote chunks equal to in-process chunks (same noise): {'yes' if equal else 'NO'}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"written: {out}")
    return 0 if equal else 1


if __name__ == "__main__":
    sys.exit(main())
