"""``drsformer serve``: derain photos from a browser on your own machine, with a before/after view (see
:mod:`drsformer.serve`)."""

from __future__ import annotations

import argparse

from ..serve.server import ServeSettings, serve
from .args import add_device, add_precision, add_weights_key, parse_tile


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--weights", action="append", required=True, metavar="FILE|DIR",
        help="a checkpoint, or a folder of them (a run's models/, pretrained/); repeatable. The page offers each",
    )  # fmt: skip
    add_weights_key(parser)
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=8000, help="port (8000)")
    parser.add_argument("--token", help="a secret every request must carry; required with a --host other than local")
    add_device(parser)
    parser.add_argument(
        "--tile", type=parse_tile, default="auto",
        help="tile size in pixels, 0 for whole images, or auto (default; as drsformer derain): tiles are exact",
    )  # fmt: skip
    add_precision(parser, help="the page's default precision")
    parser.add_argument("--max-pixels", type=int, default=40_000_000, help="largest photo, in pixels (40 million)")
    parser.add_argument("--max-mb", type=float, default=100.0, help="largest upload, in MB (100)")
    parser.add_argument(
        "--max-storage-gb", type=float, default=4.0,
        help="bound on the temporary folder of uploads and results (4 GB); the oldest results go first",
    )  # fmt: skip


def run(args: argparse.Namespace) -> int:
    settings = ServeSettings(
        weights=args.weights,
        params_key=args.params_key,
        host=args.host,
        port=args.port,
        device=args.device,
        tile=args.tile,
        precision=args.precision,
        max_pixels=args.max_pixels,
        max_bytes=int(args.max_mb * 2**20),
        max_storage_bytes=int(args.max_storage_gb * 2**30),
        token=args.token,
    )
    serve(settings)
    return 0
