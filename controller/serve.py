"""Serve a controller checkpoint over a websocket (the robot loop then uses ``controller.type=remote``).

    python -m controller.serve --checkpoint CKPT [--host 127.0.0.1] [--port 8765] [--device auto]

Loopback only unless ``--host`` says otherwise; binding any other address needs the shared token
in the environment variable ``DEXGRASPVLA_POLICY_TOKEN`` (``--token-env`` names another; the token
is never given on the command line). A DexVLA checkpoint is detected from its config: its requests
carry the language instruction and its replies the generated reasoning (``controller.policy_server.dexvla``). See ``docs/policy_server.md`` and
:mod:`controller.policy_server.server` for the protocol and the limits.
"""
from __future__ import annotations

import argparse
import logging
import sys
from typing import Optional, Sequence

from controller.policy_server.protocol import (DEFAULT_HOST, DEFAULT_MAX_IMAGE_PIXELS, DEFAULT_MAX_MESSAGE_BYTES,
                                               DEFAULT_MAX_NUM_SAMPLES, DEFAULT_PORT, TOKEN_ENV_VAR,
                                               valid_token_env_name)
from inference_utils.cli_common import positive



def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m controller.serve", description=__doc__.split("\n")[0],
                                allow_abbrev=False)  # "--token SECRET" must not pass for --token-env
    p.add_argument("--checkpoint", required=True, help="checkpoint directory written by training / export")
    p.add_argument("--host", default=DEFAULT_HOST, help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help="TCP port (0: any free port)")
    p.add_argument("--device", default="auto", help="auto (cuda, then mps, then cpu) | cpu | cuda | cuda:N | mps")
    p.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16"),
                   help="auto: bf16 autocast on CUDA, fp32 elsewhere")
    p.add_argument("--compile", action="store_true", help="torch.compile the policy (one-off compile at start-up)")
    p.add_argument("--num-samples", type=positive(int), default=1,
                   help="chunks averaged per observation when a request does not say (requests may ask for "
                        "up to --max-num-samples)")
    p.add_argument("--max-num-samples", type=positive(int), default=DEFAULT_MAX_NUM_SAMPLES)
    p.add_argument("--token-env", default=TOKEN_ENV_VAR,
                   help=f"environment variable holding the shared token (default {TOKEN_ENV_VAR})")
    p.add_argument("--max-message-mb", type=positive(float), default=DEFAULT_MAX_MESSAGE_BYTES / 2 ** 20,
                   help="largest request in MiB (default %(default)g)")
    p.add_argument("--max-image-pixels", type=positive(int), default=DEFAULT_MAX_IMAGE_PIXELS,
                   help="largest image, height x width (default %(default)d = 1920 x 1080)")
    p.add_argument("--max-clients", type=positive(int), default=1, help="clients served at once (default 1)")
    p.add_argument("--ping-interval", type=positive(float), default=20.0,
                   help="seconds between keep-alive pings; a client silent for --ping-timeout more is dropped")
    p.add_argument("--ping-timeout", type=positive(float), default=20.0)
    p.add_argument("--log-level", default="INFO")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from inference_utils.net_security import check_bind, token_from_env  # noqa: PLC0415

    if not valid_token_env_name(args.token_env):
        print(f"error: --token-env {args.token_env!r} is not an environment variable name", file=sys.stderr)
        return 2
    token = token_from_env(args.token_env)
    try:
        check_bind(args.host, token, args.token_env, "the policy server")
        if not 0 <= args.port <= 65535:
            raise ValueError(f"--port must be in [0, 65535], got {args.port}")
        if args.num_samples > args.max_num_samples:
            raise ValueError(f"--num-samples {args.num_samples} exceeds --max-num-samples {args.max_num_samples}")
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    from controller.policy_server.server import PolicyServer, ServedPolicy  # noqa: PLC0415
    from controller.workspace.checkpoint import CheckpointError  # noqa: PLC0415

    from controller.policy.dexvla_runner import is_dexvla_checkpoint  # noqa: PLC0415

    try:
        served_cls = ServedPolicy
        if is_dexvla_checkpoint(args.checkpoint):  # DexVLA: language in the requests, reasoning in the replies
            from controller.policy_server.dexvla import ServedDexVLAPolicy as served_cls  # noqa: PLC0415,N813
        policy = served_cls.from_checkpoint(args.checkpoint, args.device, args.precision, args.compile,
                                            num_samples=args.num_samples, max_num_samples=args.max_num_samples)
    except (CheckpointError, OSError, ValueError) as exc:
        print(f"error: cannot load {args.checkpoint}: {exc}", file=sys.stderr)
        return 2
    server = PolicyServer(policy, args.host, args.port, token=token, token_env=args.token_env,
                          max_message_bytes=int(args.max_message_mb * 2 ** 20),
                          max_image_pixels=args.max_image_pixels, max_clients=args.max_clients,
                          ping_interval_s=args.ping_interval, ping_timeout_s=args.ping_timeout)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        logging.getLogger("controller.policy_server").info("stopped (Ctrl-C)")
    except OSError as exc:  # address in use, permission denied
        print(f"error: cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
