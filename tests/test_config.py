"""Options files: overlays, --set overrides, validation messages, the authors' file."""

from pathlib import Path

import pytest

from drsformer.config import load_options, resolve_options
from drsformer.errors import ConfigError, MissingPathError

DATA = Path(__file__).parent / "data"
OPTIONS = Path(__file__).parents[1] / "options"

MINIMAL = """
name: mini
datasets:
  train: {dataroot_lq: in, dataroot_gt: gt, gt_size: 16, batch_size_per_gpu: 2}
train: {total_iter: 10}
"""


def _resolve(tmp_path, text: str = MINIMAL, overrides=()):
    path = tmp_path / "o.yml"
    path.write_text(text)
    return resolve_options(load_options(path, overrides))


def test_authors_file_resolves_with_its_keys_reported_once(tmp_path) -> None:
    resolved = resolve_options(load_options(DATA / "authors_deraining.yml"))
    options = resolved.options
    assert options["val"]["val_freq"] == 1000 and options["logger"]["save_checkpoint_freq"] == 1000  # !!float 1e3
    assert options["train"]["scheduler"]["periods"] == [92000, 208000]
    assert options["datasets"]["train"]["mini_batch_sizes"] == [4]
    ignored = [key for key, _ in resolved.ignored]
    assert len(ignored) == len(set(ignored))
    for key in ("model_type", "scale", "num_gpu", "dist_params", "val.rgb2bgr", "val.use_image", "logger.wandb"):
        assert key in ignored
    assert "datasets.train.prefetch_mode" in ignored and "datasets.train.batch_size_per_gpu" in ignored


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["train.optim_g.weigth_decay=0"], "train.optim_g.weigth_decay: unknown key; did you mean weight_decay?"),
        (["trian.total_iter=3"], "trian: unknown key; did you mean train?"),
        (["train.totl_iter=5"], "train.totl_iter: unknown key; did you mean total_iter?"),
        (["datasets.train.gt_szie=8"], "datasets.train.gt_szie: unknown key; did you mean gt_size?"),
        (["datasets.train.num_workers_per_gpu=2"], "did you mean num_worker_per_gpu?"),
        (["train.total_iter=2.5"], "train.total_iter: expected an integer, got float 2.5"),
        (["train.use_grad_clip=maybe"], "train.use_grad_clip: expected true or false, got str 'maybe'"),
        (["train.precision=fp8"], "train.precision: expected one of fp32, bf16, fp16, got 'fp8'"),
        (["train.optim_g.type=AdamWW"], "train.optim_g.type: unknown optimizer type 'AdamWW'; did you mean AdamW?"),
        (["train.scheduler={type: CosineAnnealingRestartCyclicLR}"], "train.scheduler: missing required key 'periods'"),
        (["network_g.dimm=8"], "network_g.dimm: unknown key; did you mean dim?"),
        (["val.metrics={psnr: {type: calculate_psnr, crop_boarder: 0}}"], "val.metrics.psnr.crop_boarder: unknown"),
        (["train.ema_decay=1.5"], "train.ema_decay: must be in [0, 1)"),
        (["datasets.train.mini_batch_sizes=[2]"], "progressive training needs gt_sizes, iters as well"),
        (["train.total_iter"], "--set 'train.total_iter': expected KEY=VALUE"),
        (["name=~"], "name: a value is required (got null)"),
    ],
)
def test_bad_keys_and_values_name_the_key(tmp_path, overrides, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        _resolve(tmp_path, overrides=overrides)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_set_parses_yaml_values_and_takes_several_assignments(tmp_path) -> None:
    options = _resolve(
        tmp_path,
        overrides=[
            "train.total_iter=2e3",
            "network_g.num_blocks=[1,1,1,1]",
            "train.optim_g.betas=[0.8, 0.9]",
            "train.optim_g.lr=1e-4",
        ],
    ).options
    assert options["train"]["total_iter"] == 2000 and options["train"]["optim_g"]["lr"] == 1e-4
    assert options["network_g"]["num_blocks"] == [1, 1, 1, 1] and options["network_g"]["type"] == "DRSformer"
    assert options["train"]["optim_g"]["betas"] == [0.8, 0.9]


def test_defaults_are_the_papers_recipe(tmp_path) -> None:
    options = _resolve(tmp_path).options
    assert options["train"]["optim_g"] == {"type": "AdamW", "lr": 3e-4, "weight_decay": 1e-4, "betas": [0.9, 0.999]}
    assert options["train"]["pixel_opt"]["type"] == "L1Loss"
    assert options["train"]["precision"] == "fp32" and options["train"]["ema_decay"] == 0
    assert options["network_g"] == {"type": "DRSformer"}


def test_overlays_merge_mappings_and_replace_lists(tmp_path) -> None:
    (tmp_path / "base.yml").write_text(MINIMAL + "network_g: {type: DRSformer, dim: 16, num_blocks: [2,2,2,2]}\n")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "over.yml").write_text(
        "base: ../base.yml\nname: over\nnetwork_g: {num_blocks: [1,1,1,1]}\ntrain: {ema_decay: 0.999}\n"
    )
    options = resolve_options(load_options(tmp_path / "sub" / "over.yml")).options
    assert options["name"] == "over"
    assert options["network_g"] == {"type": "DRSformer", "dim": 16, "num_blocks": [1, 1, 1, 1]}
    assert options["train"]["total_iter"] == 10 and options["train"]["ema_decay"] == 0.999
    (tmp_path / "base.yml").write_text("base: sub/over.yml\n")
    with pytest.raises(ConfigError, match="'base' files include each other"):
        load_options(tmp_path / "sub" / "over.yml")
    with pytest.raises(MissingPathError, match="nothing.yml: no such options file"):
        load_options(tmp_path / "nothing.yml")


def test_shipped_option_files_resolve() -> None:
    files = sorted((OPTIONS / "train").glob("*.yml"))
    assert {f.stem for f in files} >= {"Rain200H", "Rain200L", "DID", "DDN", "SPA", "Finetune_Custom"}
    for path in files:
        if path.name.startswith("_"):
            continue
        options = resolve_options(load_options(path)).options
        train = options["train"]
        assert options["datasets"]["train"]["type"] in ("PairedImageDataset", "Dataset_PairedImage")
        if path.stem in ("Rain200H", "Rain200L", "DID", "DDN", "SPA"):
            assert train["total_iter"] == 300_000 and train["optim_g"]["lr"] == 3e-4
            assert train["scheduler"]["periods"] == [92_000, 208_000]
            assert train["scheduler"]["eta_mins"] == [3e-4, 1e-6]
            assert train["effective_batch_size"] == 16 and options["datasets"]["train"]["gt_size"] == 128
            assert options["network_g"]["mefc"] is (path.stem in ("Rain200H", "DID", "DDN"))
