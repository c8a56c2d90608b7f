"""from_checkpoint: infers the architecture, loads strictly, and rejects bad files with a specific message."""

import json
import pickle

import pytest
import torch
from conftest import DATA, TINY, load_reference

from drsformer.archs import CheckpointError, DRSformer, from_checkpoint, infer_config
from drsformer.archs.checkpoint import infer_ffn_factor, load_model

MANIFEST = json.loads((DATA / "official_state_dict_manifest.json").read_text())


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("mefc", [True, False])
def test_round_trip_wrappers_and_prefixes(tmp_path, mefc: bool) -> None:
    model = DRSformer(**TINY, mefc=mefc, bias=True, LayerNorm_type="BiasFree")
    state = model.state_dict()
    ema = {k: v + 1 for k, v in state.items()}
    torch.save({"params": state, "params_ema": ema}, tmp_path / "both.pth")
    loaded = from_checkpoint(tmp_path / "both.pth")
    assert loaded.config == model.config and _same_weights(loaded, model)
    loaded_ema = from_checkpoint(tmp_path / "both.pth", key="params_ema")
    assert torch.equal(loaded_ema.state_dict()["output.weight"], ema["output.weight"])

    torch.save(state, tmp_path / "bare.pth")
    assert _same_weights(from_checkpoint(str(tmp_path / "bare.pth")), model)
    ddp = {"params": {"module." + k: v for k, v in state.items()}}
    assert _same_weights(from_checkpoint(ddp), model)
    compiled = {"_orig_mod." + k: v for k, v in state.items()}
    assert _same_weights(from_checkpoint(compiled, impl="reference"), model)


@pytest.mark.parametrize("variant", ["mefc", "no_mefc"])
def test_official_layout_loads_strictly(variant: str) -> None:
    expected = MANIFEST[variant]
    state = {k: torch.randn(shape) for k, shape in expected["state_dict"].items()}
    assert infer_config(state) == DRSformer(**expected["config"]).config
    model = from_checkpoint({"params": state})
    assert model.config == DRSformer(**expected["config"]).config
    assert torch.equal(model.state_dict()["output.weight"], state["output.weight"])


@pytest.mark.parametrize("name", ["small_mefc", "small_no_mefc"])
def test_reference_fixtures_infer_their_config(name: str) -> None:
    ref = load_reference(name)
    model = from_checkpoint(ref).eval()
    assert model.config == DRSformer(**ref["config"]).config
    with torch.no_grad():
        assert (model(ref["input"]) - ref["output_float32"]).abs().max() < 1e-4


@pytest.mark.parametrize("dim", [8, 16, 48, 64])
@pytest.mark.parametrize("factor", [2.66, 2.0, 3.0, 1.5, 2.5, 4.0])
def test_ffn_factor_inference_reproduces_widths(dim: int, factor: float) -> None:
    widths = [dim * 2**i for i in range(4)]
    hidden = [int(w * factor) for w in widths]
    inferred = infer_ffn_factor(widths, hidden)
    assert [int(w * inferred) for w in widths] == hidden


def test_custom_architecture_is_inferred() -> None:
    config = dict(dim=16, num_blocks=[2, 1, 3, 1], heads=[2, 4, 4, 8], ffn_expansion_factor=2.0)
    model = DRSformer(**config, inp_channels=1, out_channels=1, mefc=False)
    assert from_checkpoint({"params": model.state_dict()}).config == model.config


# ---------------------------------------------------------------- bad input


@pytest.fixture
def good_file(weights):
    return weights


def test_truncated_file(tmp_path, good_file) -> None:
    data = good_file.read_bytes()
    cut = tmp_path / "cut.pth"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"cut\.pth: unreadable, the file is truncated"):
        from_checkpoint(cut)


def test_empty_and_missing_files(tmp_path) -> None:
    (tmp_path / "empty.pth").write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty.pth: empty file"):
        from_checkpoint(tmp_path / "empty.pth")
    with pytest.raises(CheckpointError, match="nothere.pth: no such file"):
        from_checkpoint(tmp_path / "nothere.pth")


class Payload:
    def __reduce__(self):
        return (print, ("this would run on load",))


def test_pickle_with_code_is_refused(tmp_path) -> None:
    path = tmp_path / "evil.pth"
    torch.save({"params": {"x": torch.zeros(1)}, "hook": Payload()}, path)
    with pytest.raises(CheckpointError, match=r"evil\.pth: refused, the file contains pickled code or objects"):
        from_checkpoint(path)
    raw = tmp_path / "raw.pkl"
    raw.write_bytes(pickle.dumps(Payload(), protocol=2))
    with pytest.raises(CheckpointError, match=r"raw\.pkl: refused"):
        from_checkpoint(raw)


def test_a_drsformer_without_mixing_scalars_like_the_rain100l_upload_loads_as_dense_attention(tmp_path) -> None:
    """The authors' mis-uploaded Rain100L file (their issue #4) has no attn1..attn4: it is read as what it
    computes, dense attention, with one line saying so and why."""
    state = {k: v for k, v in DRSformer(**TINY).state_dict().items() if not k.split(".")[-1].startswith("attn")}
    with pytest.warns(UserWarning, match="loaded as dense attention") as caught:
        model = from_checkpoint({"params": state})
    assert model.config["attention"] == "dense" and model.config["ffn"] == "msfn" and model.has_mefc
    assert "Rain100L" in str(caught[0].message) and "\n" not in str(caught[0].message)
    torch.save({"params": state}, tmp_path / "rain100l.pth")
    _, note = load_model(tmp_path / "rain100l.pth")
    assert note is not None and note.startswith(f"{tmp_path / 'rain100l.pth'}: a DRSformer without the top-k")


def test_missing_and_unexpected_keys_are_summarised() -> None:
    state = DRSformer(**TINY).state_dict()
    del state["encoder_level2.0.ffn.dwconv5x5.weight"]
    state["encoder_level1.0.attn.extra.weight"] = torch.zeros(1)
    with pytest.raises(CheckpointError) as info:
        from_checkpoint({"params": state})
    message = str(info.value)
    assert "1 missing keys: encoder_level*.*.ffn.dwconv*x*.weight" in message
    assert "1 unexpected keys: encoder_level*.*.attn.extra.weight" in message
    assert len(message) < 400


def test_shape_mismatch_names_the_key() -> None:
    state = DRSformer(**TINY).state_dict()
    state["encoder_level1.0.attn.qkv_dwconv.weight"] = torch.zeros(24, 1, 5, 5)
    with pytest.raises(CheckpointError, match=r"qkv_dwconv.weight has shape \[24, 1, 5, 5\] but the model expects"):
        from_checkpoint({"params": state})


def test_variant_mismatch_with_override() -> None:
    state = DRSformer(**TINY, mefc=True).state_dict()
    with pytest.raises(CheckpointError, match=r"unexpected keys: encoder_level\*\.layers"):
        from_checkpoint(state, mefc=False)


def test_not_a_drsformer_checkpoint() -> None:
    with pytest.raises(CheckpointError, match="not a DRSformer checkpoint, key 'patch_embed.proj.weight' is missing"):
        from_checkpoint({"params": {"conv.weight": torch.zeros(3, 3, 3, 3)}})
    restormer_like = {
        "patch_embed.proj.weight": torch.zeros(48, 3, 3, 3),
        "output.weight": torch.zeros(3, 96, 3, 3),
        "encoder_level1.0.ffn.dwconv.weight": torch.zeros(1),
    }
    with pytest.raises(CheckpointError, match="no blocks for"):
        from_checkpoint(restormer_like)
    with pytest.raises(CheckpointError, match="expected a checkpoint path or a state dict, got a Tensor"):
        from_checkpoint(torch.zeros(3))  # type: ignore[arg-type]
    with pytest.raises(CheckpointError, match="has no 'params_ema' weights; it holds 'params'"):
        from_checkpoint({"params": {"a": torch.zeros(1)}, "iter": 5}, key="params_ema")
    with pytest.raises(CheckpointError, match="entry 'step' is a int, not a tensor"):
        from_checkpoint({"params": {"a": torch.zeros(1), "step": 3}})
