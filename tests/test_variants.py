"""The network family: the paper's ablation switches (attention, top-k ratios, FFN, MEFC, refinement blocks) and
Restormer, exact to its published code; each variant read back from its keys, tiled exactly, run in reduced
precision, trained and resumed; the comparison tables."""

from __future__ import annotations

import contextlib
import json
import warnings

import pytest
import torch
import torch.nn.functional as F
from conftest import DATA, load_reference, make_pairs

from drsformer import tiling
from drsformer.archs import DRSformer, Restormer, architecture_name, from_checkpoint, infer_config
from drsformer.archs.blocks import DconvFeedForward, PlainFeedForward
from drsformer.archs.checkpoint import load_model
from drsformer.cli import main
from drsformer.errors import CheckpointError, ConfigError
from drsformer.inference import restore

SMALL = dict(dim=8, num_blocks=[1, 1, 1, 1], heads=[1, 2, 4, 8])
VARIANTS = {
    "dense": dict(attention="dense"),
    "ratio_2_3": dict(topk_ratios=["2/3"]),
    "ratios_1_2_and_1": dict(topk_ratios=["1/2", 1]),
    "fn": dict(ffn="fn", mefc=False),
    "dfn": dict(ffn="dfn"),
    "gdfn": dict(ffn="gdfn", mefc=False),
    "refinement": dict(mefc=False, num_refinement_blocks=2),
    "restormer": dict(mefc=False, attention="dense", ffn="gdfn", num_refinement_blocks=1),
    "dual_pixel": dict(mefc=False, attention="dense", ffn="gdfn", num_refinement_blocks=1, dual_pixel_task=True,
                       inp_channels=6),
}  # fmt: skip


def _perturbed(config: dict, seed: int = 3, dtype: torch.dtype = torch.float64) -> DRSformer:
    """A model whose every parameter is moved off its initial value, so no ones or zeros hide a wiring mistake."""
    torch.manual_seed(seed)
    model = DRSformer(**SMALL, **config)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return model.eval().to(dtype)


def _input(config: dict, shape=(1, 40, 48), dtype: torch.dtype = torch.float64) -> torch.Tensor:
    return torch.rand(shape[0], config.get("inp_channels", 3), *shape[1:], dtype=dtype)


# ---------------------------------------------------------------- Restormer, exact to its release


@pytest.mark.parametrize("name", ["restormer_small", "restormer_small_biasfree"])
def test_restormer_reproduces_the_published_outputs(name: str) -> None:
    reference = load_reference(name)
    model = Restormer(**reference["config"])
    model.load_state_dict(reference["params"], strict=True)
    for impl in ("fast", "reference"):
        model.set_impl(impl)
        with torch.no_grad():
            out64 = model.double().eval()(reference["input"].double())
            out32 = model.float().eval()(reference["input"])
        assert (out64 - reference["output_float64"]).abs().max().item() < 1e-8, impl
        assert (out32 - reference["output_float32"]).abs().max().item() < 1e-4, impl


def test_restormer_has_the_published_keys_shapes_and_size() -> None:
    manifest = json.loads((DATA / "restormer_state_dict_manifest.json").read_text())
    with torch.device("meta"):
        model = Restormer(**{k: v for k, v in manifest["config"].items()})
    state = model.state_dict()
    assert {k: list(v.shape) for k, v in state.items()} == manifest["state_dict"]
    assert sum(p.numel() for p in model.parameters()) == manifest["num_parameters"] == 26_126_644
    assert architecture_name(model.config) == "Restormer"


@pytest.mark.parametrize("name", ["restormer_small", "restormer_small_biasfree"])
def test_a_restormer_checkpoint_is_read_as_restormer(name: str) -> None:
    reference = load_reference(name)
    model = from_checkpoint({"params": reference["params"]})
    assert isinstance(model, Restormer) and type(model).__name__ == "Restormer"
    expected = {k: v for k, v in reference["config"].items()}
    assert {k: model.config[k] for k in expected} == expected
    with torch.no_grad():
        assert (model.double()(reference["input"].double()) - reference["output_float64"]).abs().max() < 1e-8


# ---------------------------------------------------------------- each switch


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_the_fast_path_equals_the_reference_in_values_and_gradients(variant: str) -> None:
    config = VARIANTS[variant]
    fast, reference = _perturbed(config), _perturbed(config).set_impl("reference")
    x = _input(config)
    out_fast, out_reference = fast.train()(x), reference.train()(x)
    assert (out_fast - out_reference).abs().max().item() < 1e-10
    out_fast.square().mean().backward()
    out_reference.square().mean().backward()
    grads = {n: p.grad for n, p in reference.named_parameters()}
    worst = max((p.grad - grads[n]).abs().max().item() for n, p in fast.named_parameters())
    assert worst < 1e-10, worst


def test_dense_attention_is_softmax_over_every_score() -> None:
    """MDTA written out with plain tensor operations, against the module's reference and fast paths."""
    model = _perturbed(VARIANTS["dense"])
    attention = model.encoder_level2[0].attn
    x = torch.rand(1, 16, 10, 12, dtype=torch.float64)
    qkv = attention.qkv_dwconv(attention.qkv(x))
    q, k, v = (t.reshape(1, 2, 8, 120) for t in qkv.chunk(3, dim=1))
    scores = F.normalize(q, dim=-1) @ F.normalize(k, dim=-1).transpose(-2, -1) * attention.temperature
    expected = attention.project_out((scores.softmax(-1) @ v).reshape(1, 16, 10, 12))
    for impl in ("fast", "reference"):
        attention.impl = impl
        assert (attention(x) - expected).abs().max().item() < 1e-12, impl


@pytest.mark.parametrize("kind", [DconvFeedForward, PlainFeedForward])
def test_the_plain_feed_forward_networks_compute_their_formula(kind) -> None:
    ffn = kind(8, 2.0, bias=True).double()
    x = torch.rand(1, 8, 6, 7, dtype=torch.float64)
    hidden = F.conv2d(x, ffn.project_in.weight, ffn.project_in.bias)
    if kind is DconvFeedForward:
        hidden = F.conv2d(hidden, ffn.dwconv.weight, ffn.dwconv.bias, padding=1, groups=16)
    expected = F.conv2d(F.gelu(hidden), ffn.project_out.weight, ffn.project_out.bias)
    assert hidden.shape[1] == 16 and (ffn(x) - expected).abs().max().item() < 1e-12


def test_single_ratio_top_k_keeps_k_scores_per_row() -> None:
    model = _perturbed(VARIANTS["ratio_2_3"])
    attention = model.encoder_level3[0].attn  # 32 channels, 4 heads: 8 per head, k = int(8 * 2/3) = 5
    assert attention.counts == (5,) and len(attention.mix) == 1
    x = torch.rand(1, 32, 6, 6, dtype=torch.float64)
    q, k, _ = attention.project_qkv(x)
    from drsformer.archs.attention import attention_sums

    weights = attention.weights(attention_sums(q.flatten(-2), k.flatten(-2)))
    assert ((weights != 0).sum(-1) == 5).all()


@pytest.mark.parametrize(
    "config, message",
    [
        (dict(attention="sparse"), "attention must be one of topk, dense"),
        (dict(ffn="mlp"), "ffn must be one of msfn, gdfn, dfn, fn"),
        (dict(num_refinement_blocks=2), "mefc and num_refinement_blocks both refine"),
        (dict(topk_ratios=[]), "topk_ratios: expected a non-empty list"),
        (dict(topk_ratios=["3/2"]), "each ratio must be in (0, 1]"),
        (dict(topk_ratios=["1/16"]), "keep no channel of a head of 8"),
    ],
)
def test_switches_that_cannot_work_are_config_errors(config: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        DRSformer(**SMALL, **config)


def test_the_defaults_are_the_published_model() -> None:
    assert DRSformer().config == {**DRSformer(attention="topk", ffn="msfn", mefc=True).config}
    assert architecture_name(DRSformer().config) == "DRSformer"
    assert architecture_name(DRSformer(mefc=False, attention="dense", ffn="fn").config) == (
        "DRSformer without MEFC (dense attention, FN)"
    )


# ---------------------------------------------------------------- read from the file


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_every_variant_is_read_from_its_keys(variant: str) -> None:
    model = _perturbed(VARIANTS[variant], dtype=torch.float32)
    ratios = model.config["topk_ratios"]
    known = {} if len(ratios) == 4 or model.config["attention"] == "dense" else {"topk_ratios": ratios}
    assert infer_config(model.state_dict(), known=known) == model.config
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loaded = from_checkpoint({"params": model.state_dict(), "architecture": model.config})
    assert loaded.config == model.config
    x = _input(VARIANTS[variant], dtype=torch.float32)
    with torch.no_grad():
        assert torch.equal(loaded.eval()(x), model(x))


def test_ratios_other_than_the_papers_come_from_the_file_or_the_caller(tmp_path) -> None:
    model = _perturbed(VARIANTS["ratio_2_3"], dtype=torch.float32)
    with pytest.raises(CheckpointError, match=r"mixes 1 top-k ratios \(attn1..attn1\), and which ones is not in"):
        from_checkpoint({"params": model.state_dict()})
    assert from_checkpoint({"params": model.state_dict()}, topk_ratios=["2/3"]).config == model.config
    torch.save({"params": model.state_dict(), "architecture": model.config}, tmp_path / "w.pth")
    assert load_model(tmp_path / "w.pth")[0].config == model.config


def test_a_file_of_no_variant_says_which_keys_do_not_fit() -> None:
    state = _perturbed(VARIANTS["gdfn"], dtype=torch.float32).state_dict()
    state["encoder_level2.0.ffn.dwconv.weight"] = state["encoder_level2.0.ffn.dwconv.weight"][:10]
    with pytest.raises(CheckpointError) as info:
        from_checkpoint({"params": state})
    message = str(info.value)
    assert "encoder_level2.0.ffn.dwconv.weight has shape" in message and "\n" not in message


# ---------------------------------------------------------------- every path


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_exact_tiles_equal_the_whole_image_for_every_variant(variant: str) -> None:
    config = VARIANTS[variant]
    model = _perturbed(config)
    assert tiling.supports(model)
    x = _input(config, (1, 45, 53))
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("error")  # no "runs whole images" fallback
        whole = model(x)
        tiled = tiling.tiled_forward(model, x, 16, contextlib.nullcontext)
    assert (tiled - whole).abs().max().item() < 1e-12


def test_restormer_tiles_exactly_through_restore() -> None:
    reference = load_reference("restormer_small")
    model = from_checkpoint({"params": reference["params"]}).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tiled = restore(model, reference["input"], tile=16, self_ensemble=True)
    assert (tiled - restore(model, reference["input"], self_ensemble=True)).abs().max().item() < 1e-5


@pytest.mark.parametrize("variant", ["dense", "restormer", "fn"])
@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_reduced_precision_runs_every_variant(variant: str, precision: str) -> None:
    model = _perturbed(VARIANTS[variant], dtype=torch.float32)
    x = _input(VARIANTS[variant], (1, 32, 40), dtype=torch.float32)
    whole, reduced = restore(model, x), restore(model, x, precision)
    tiled = restore(model, x, precision, tile=16)
    error = (reduced - whole).abs().max().item()
    assert 0 < error < 0.5 and (tiled - reduced).abs().max().item() <= max(2 * error, 1e-3)  # its own rounding


@pytest.mark.parametrize("variant, fmt", [("restormer", "onnx"), ("dense", "pt2")])
def test_variants_export_and_pass_their_check(tmp_path, variant: str, fmt: str, capsys) -> None:
    model = _perturbed(VARIANTS[variant], dtype=torch.float32)
    torch.save({"params": model.state_dict()}, tmp_path / "w.pth")
    out = tmp_path / f"model.{fmt}"
    assert main(["export", "--weights", str(tmp_path / "w.pth"), "-o", str(out), "--check-sizes", "40x56"]) == 0
    assert out.is_file() and "matches PyTorch within" in capsys.readouterr().out


# ---------------------------------------------------------------- tables


def test_info_describes_a_variant_and_tables_the_ablations(tmp_path, capsys) -> None:
    model = _perturbed(VARIANTS["restormer"], dtype=torch.float32)
    torch.save({"params": model.state_dict()}, tmp_path / "r.pth")
    assert main(["info", "--weights", str(tmp_path / "r.pth"), "--size", "32"]) == 0
    assert capsys.readouterr().out.startswith(f"Restormer from {tmp_path / 'r.pth'}")
    assert main(["info", "--table", "--size", "32"]) == 0
    table = capsys.readouterr().out
    assert "| Restormer (paper baseline) | Restormer | 26,126,644 |" in table
    assert "| DRSformer (paper, with MEFC) | DRSformer | 33,655,424 |" in table
    for row in ("attention_dense", "attention_topk_2_3", "ffn_fn", "ffn_dfn", "ffn_gdfn", "without_mefc"):
        assert f"| {row} |" in table


def test_a_test_file_with_several_models_prints_one_table(tmp_path, capsys) -> None:
    make_pairs(tmp_path / "Rain200H", n=2, size=(24, 32))
    weights = {}
    for name, variant in (("DRSformer-tiny", "dfn"), ("Restormer-tiny", "restormer")):
        torch.save(
            {"params": _perturbed(VARIANTS[variant], dtype=torch.float32).state_dict()}, tmp_path / f"{name}.pth"
        )
        weights[name] = str(tmp_path / f"{name}.pth")
    options = tmp_path / "compare.yml"
    options.write_text(json.dumps({
        "out": str(tmp_path / "results"),
        "datasets": {"Rain200H": str(tmp_path / "Rain200H")},
        "models": [{"name": name, "weights": path} for name, path in weights.items()],
    }))  # fmt: skip
    assert main(["test", "-opt", str(options), "--quiet"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "| model | Rain200H PSNR / SSIM |"
    assert [line.split(" | ")[0] for line in lines[2:]] == [
        "| DRSformer-tiny",
        "| Restormer-tiny",
        "| DRSformer (paper)",
        "| Restormer (paper)",
    ]
    assert lines[-2] == "| DRSformer (paper) | 32.17 / 0.9326 |" and lines[-1] == "| Restormer (paper) | 32.00 / - |"
    assert (tmp_path / "results" / "Restormer-tiny" / "Rain200H" / "0.png").is_file()


# ---------------------------------------------------------------- training


@pytest.mark.parametrize("network", [
    {"type": "Restormer", "dim": 8, "num_blocks": [1, 1, 1, 1], "num_refinement_blocks": 1},
    {"type": "DRSformer", **SMALL, "mefc": False, "topk_ratios": ["3/4"], "ffn": "dfn"},
])  # fmt: skip
def test_variants_train_and_resume_exactly(tmp_path, network: dict) -> None:
    """Four iterations at once, or two and two more from the saved state: the same weights; the weight file
    carries what its keys cannot tell (the top-k ratios) and reads back as the network it was."""
    import yaml
    from test_train import _same, _tiny_options

    from drsformer.archs import build_network

    options = _tiny_options(tmp_path, train={"total_iter": 4}, val={"val_freq": 4},
                            logger={"print_freq": 2, "save_checkpoint_freq": 2, "use_tb_logger": False})  # fmt: skip
    content = yaml.safe_load(options.read_text())
    options.write_text(yaml.safe_dump({**content, "network_g": network}))
    base = ["train", "-opt", str(options), "--no-progress"]
    assert main([*base, "--set", f"path.experiments_root={tmp_path}/whole"]) == 0
    assert main([*base, "--set", "train.total_iter=2"]) == 0
    assert main([*base, "--resume", "auto"]) == 0
    assert _same(tmp_path / "whole/models/net_g_latest.pth", tmp_path / "run/models/net_g_latest.pth")
    model, _ = load_model(tmp_path / "run/models/net_g_latest.pth")
    expected = build_network(network)
    assert type(model) is type(expected) and model.config == expected.config


def test_restormers_own_options_file_runs_as_it_is(tmp_path, capsys) -> None:
    make_pairs(tmp_path / "Datasets/train/Rain200H", n=4)
    make_pairs(tmp_path / "Datasets/test/Rain200H", n=2, seed=1)
    overrides = [
        *(f"datasets.{s}.dataroot_{k}={tmp_path}/Datasets/{p}/Rain200H/{d}"
          for s, p in (("train", "train"), ("val", "test")) for k, d in (("lq", "input"), ("gt", "target"))),
        "network_g.dim=8", "network_g.num_blocks=[1,1,1,1]", "network_g.num_refinement_blocks=1",
        "datasets.train.mini_batch_sizes=[2] datasets.train.iters=[4] datasets.train.gt_sizes=[16]",
        "datasets.train.gt_size=16 datasets.train.num_worker_per_gpu=0",
        f"train.total_iter=4 val.val_freq=2 logger.print_freq=2 path.experiments_root={tmp_path}/run",
    ]  # fmt: skip
    argv = ["train", "-opt", str(DATA / "restormer_deraining.yml"), "--no-progress"]
    for item in overrides:
        argv += ["--set", *item.split()]
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert "info: model_type is ignored here" in err
    model, _ = load_model(tmp_path / "run/models/net_g_latest.pth")
    assert isinstance(model, Restormer) and model.config["num_refinement_blocks"] == 1
