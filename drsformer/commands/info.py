"""``drsformer info``: the architecture a model or checkpoint has, its size and its cost; ``--table`` compares
DRSformer, its ablations (every ``options/train/ablations/*.yml``) and Restormer."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch

from ..archs import VARIANTS, build_network
from ..archs.cost import comparison_table, describe, format_description
from ..config.load import load_options
from ..errors import ConfigError
from .args import add_model, model_from_args, parse_size

ABLATIONS = Path(__file__).resolve().parents[2] / "options" / "train" / "ablations"
TABLE_VARIANTS = {"drsformer": "DRSformer (paper, with MEFC)", "drsformer_no_mefc": "DRSformer without MEFC",
                  "restormer": "Restormer (paper baseline)"}  # fmt: skip


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model(parser)
    parser.add_argument("--size", type=parse_size, default=(256, 256), help="input size for FLOPs: N or HxW")
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")
    parser.add_argument(
        "--table",
        action="store_true",
        help="parameters and GFLOPs of DRSformer, DRSformer without MEFC, every ablation options file and "
        "Restormer, as one Markdown table",
    )
    parser.add_argument(
        "--ablations", type=Path, default=ABLATIONS, help="folder of ablation options files for --table"
    )


def table_rows(ablations: Path) -> list[tuple[str, dict[str, Any]]]:
    """(label, config) of the named variants and of each options file in ``ablations``."""
    rows = []
    with torch.device("meta"):
        for name, label in TABLE_VARIANTS.items():
            rows.append((label, dict(VARIANTS[name]().config)))
        for path in sorted(ablations.glob("*.yml")) if ablations.is_dir() else []:
            network = load_options(path).get("network_g")
            if not isinstance(network, dict):
                raise ConfigError(f"{path}: no network_g section")
            model = build_network(network)
            rows.append((path.stem, dict(getattr(model, "config", {}))))
    return rows


def run(args: argparse.Namespace) -> int:
    if args.table:
        print(comparison_table(table_rows(args.ablations), *args.size))
        if not args.ablations.is_dir():
            print(f"(no ablation options files: {args.ablations} is not a folder; run from a checkout)")
        return 0
    model, source = model_from_args(args)
    info = describe(model, *args.size)
    print(json.dumps(info, indent=2) if args.json else format_description(info, source))
    return 0
