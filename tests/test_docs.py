"""The documentation's recipes run as written: docs/development.md's architecture, loss and dataset are executed
from the page itself, named in an options file, and trained with; README.md's links lead to files that exist."""

from __future__ import annotations

import re
from pathlib import Path

import yaml
from conftest import make_pairs

from drsformer.config import resolve_options
from drsformer.config.load import merge
from drsformer.engine.trainer import Trainer
from drsformer.registry import ARCH_REGISTRY, DATASET_REGISTRY, LOSS_REGISTRY

ROOT = Path(__file__).resolve().parents[1]


def code_blocks(page: Path, language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", page.read_text(), flags=re.S)


def test_the_development_recipes_train(tmp_path) -> None:
    page = ROOT / "docs" / "development.md"
    blocks = code_blocks(page, "python")
    assert len(blocks) == 3 and all(".register()" in block for block in blocks)
    added = {"ResidualConvNet": ARCH_REGISTRY, "GradientL1Loss": LOSS_REGISTRY, "GrayscalePairs": DATASET_REGISTRY}
    try:
        for block in blocks:
            exec(compile(block, str(page), "exec"), {"__name__": "recipe"})  # noqa: S102 (our own page)
        assert all(name in registry for name, registry in added.items())
        (options_text,) = code_blocks(page, "yaml")
        make_pairs(tmp_path / "data", n=3)
        base = {
            "name": "recipe",
            "datasets": {
                "train": {"dataroot_lq": str(tmp_path / "data/input"), "dataroot_gt": str(tmp_path / "data/target"),
                          "batch_size_per_gpu": 2, "gt_size": 16, "num_worker_per_gpu": 0},
                "val": {"dataroot_lq": str(tmp_path / "data/input"), "dataroot_gt": str(tmp_path / "data/target")},
            },
            "train": {"total_iter": 2},
            "val": {"val_freq": 2, "protocol": "restormer"},
            "path": {"experiments_root": str(tmp_path / "run")},
            "logger": {"print_freq": 1, "save_checkpoint_freq": 2, "use_tb_logger": False},
        }  # fmt: skip
        options = resolve_options(merge(base, yaml.safe_load(options_text))).options
        run = Trainer(options).run(progress_bar=False)
        log = (run / "train.log").read_text()
        assert "validation val (3 images, restormer)" in log and (run / "models" / "net_g_latest.pth").is_file()
    finally:
        for name, registry in added.items():
            registry._entries.pop(name, None)


def test_readme_links_lead_to_files() -> None:
    text = (ROOT / "README.md").read_text()
    links = [link.split("#")[0] for link in re.findall(r"\]\(([^)\s]+)\)", text) if "://" not in link]
    missing = [link for link in links if link and not (ROOT / link).exists()]
    assert links and not missing, missing
