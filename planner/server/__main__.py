"""Command line: ``python -m planner.server --host 127.0.0.1 --port 8001 [--log-dir DIR]``.

Limits: ``--max-body-mb`` (default 8), ``--max-image-pixels`` (default 4194304 = 2048 x 2048),
``--max-images`` (default 8); see :mod:`planner.server.app`. The API token is read from the
environment variable named by ``--token-env`` (default ``DEXGRASPVLA_PLANNER_API_KEY``), never
from the command line; a non-loopback ``--host`` without it set is refused.
"""

from __future__ import annotations

import argparse
import logging
import os
from typing import Optional, Sequence

import uvicorn

from inference_utils.cli_common import positive
from planner.server.app import (DEFAULT_MAX_BODY_MB, DEFAULT_MAX_IMAGE_PIXELS, DEFAULT_MAX_IMAGES, MODEL_ID,
                                TOKEN_ENV_VAR, check_bind, create_app)



def build_parser() -> argparse.ArgumentParser:
    """The server's argument parser."""
    from inference_utils import cli_common  # noqa: PLC0415 - kebab-case flags; old underscore spellings accepted
    parser = cli_common.ArgumentParser(description="DexGraspVLA offline planner (OpenAI-compatible, no VLM).")
    parser.add_argument("--host", default="127.0.0.1",
                        help="bind address (default 127.0.0.1, loopback only; any other address needs the "
                             "token environment variable, see --token-env)")
    parser.add_argument("--port", type=int, default=8001)
    parser.add_argument("--log-dir", default=None, help="directory for server_requests.jsonl")
    parser.add_argument("--model-id", default=MODEL_ID, help="model id reported by /v1/models")
    parser.add_argument("--log-level", default="info")
    parser.add_argument("--max-body-mb", type=positive(float), default=DEFAULT_MAX_BODY_MB,
                        help=f"largest request body in MB, larger gets HTTP 413 (default {DEFAULT_MAX_BODY_MB:g})")
    parser.add_argument("--max-image-pixels", type=positive(int), default=DEFAULT_MAX_IMAGE_PIXELS,
                        help="largest width*height of one image, checked from its header before decoding "
                             f"(default {DEFAULT_MAX_IMAGE_PIXELS} = 2048x2048)")
    parser.add_argument("--max-images", type=positive(int), default=DEFAULT_MAX_IMAGES,
                        help=f"most images in one request (default {DEFAULT_MAX_IMAGES})")
    parser.add_argument("--token-env", default=TOKEN_ENV_VAR,
                        help="name of the environment variable holding the API token; when it is set, requests "
                             f"need 'Authorization: Bearer <token>' (default {TOKEN_ENV_VAR})")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> None:
    """Parse arguments, check the bind address against the token, and serve until interrupted."""
    parser = build_parser()
    args = parser.parse_args(argv)
    token = os.environ.get(args.token_env) or None
    try:
        check_bind(args.host, token, args.token_env)
    except ValueError as exc:
        parser.error(str(exc))
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s")
    app = create_app(args.model_id, args.log_dir, max_body_mb=args.max_body_mb,
                     max_image_pixels=args.max_image_pixels, max_images=args.max_images, api_token=token)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level)


if __name__ == "__main__":
    main()
