"""drsformer export and the ONNX Runtime backend: dynamic shapes that hold at sizes other than the traced one,
the check that keeps nothing when the file is wrong, pt2 in reduced precision, derain --backend onnxruntime."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from drsformer.archs import DRSformer
from drsformer.archs.blocks import LayerNorm
from drsformer.archs.padding import crop_to, reflect_by_indexing
from drsformer.cli import main
from drsformer.data.io import read_image, write_image
from drsformer.deploy import verify
from drsformer.deploy.runtime import OnnxModel, Pt2Model
from drsformer.errors import CheckpointError, ExportError, MissingDependency
from drsformer.optional import require

pytest.importorskip("onnxruntime", reason="the [export] extra is not installed")
pytest.importorskip("onnxscript", reason="the [export] extra is not installed")

# The smallest DRSformer: one block per level; 2, 2, 4 and 8 channels per head.
SMALL = dict(dim=8, num_blocks=[1, 1, 1, 1], heads=[4, 8, 8, 8], ffn_expansion_factor=2.66)
# Not the traced 64 x 64: two sides that are not multiples of 8 (the padding the trace did not need), a batch of 2.
OTHER_SIZES = [(1, 77, 131), (1, 96, 72), (2, 57, 200)]


def _weights(folder: Path, mefc: bool) -> tuple[Path, DRSformer]:
    torch.manual_seed(3)
    model = DRSformer(**SMALL, mefc=mefc).eval()
    path = folder / f"small_{'mefc' if mefc else 'plain'}.pth"
    torch.save({"params": model.state_dict()}, path)
    return path, model


@pytest.fixture(scope="module", params=[True, False], ids=["mefc", "no_mefc"])
def onnx_export(request, tmp_path_factory) -> tuple[Path, DRSformer, str]:
    """A dynamic ONNX export through the command, as a user runs it; its printed check table."""
    folder = tmp_path_factory.mktemp("onnx")
    weights, model = _weights(folder, request.param)
    out = folder / "small.onnx"
    argv = ["export", "--weights", str(weights), "-o", str(out)]
    import contextlib
    import io

    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert main(argv) == 0
    return out, model, printed.getvalue()


def _images(batch: int, height: int, width: int, seed: int = 5) -> torch.Tensor:
    return torch.rand(batch, 3, height, width, generator=torch.Generator().manual_seed(seed + height))


def test_dynamic_onnx_runs_at_sizes_other_than_the_traced_one(onnx_export) -> None:
    path, model, printed = onnx_export
    assert "traced at 64x64" in printed and "matches PyTorch within 1e-04 at every size" in printed
    assert [p.name for p in path.parent.iterdir() if p.name.startswith(".")] == []  # no temporary file left
    session = OnnxModel(path)
    assert session.session.get_inputs()[0].name == "image"
    for batch, height, width in OTHER_SIZES + [(1, 9, 200), (1, 16, 16)]:
        image = _images(batch, height, width)
        with torch.inference_mode():
            expected = model(image)
        out = session(image)
        assert out.shape == expected.shape
        assert (out - expected).abs().max().item() < 1e-4, (batch, height, width)


def test_onnx_files_hold_the_forms_onnxruntime_runs_fastest(onnx_export) -> None:
    """The MSFN's pair-grouped convolutions in their blocked form (no grouped convolution but depth-wise ones), and
    one LayerNormalization node per layer norm."""
    onnx = require("onnx", "the test")
    graph = onnx.load(str(onnx_export[0])).graph
    weights = {init.name: list(init.dims) for init in graph.initializer}
    groups = []
    for node in graph.node:
        if node.op_type == "Conv":
            group = next((a.i for a in node.attribute if a.name == "group"), 1)
            groups.append(group)
            if group > 1:
                assert weights[node.input[1]][1] == 1, node.name  # one input channel per group
    assert max(groups) >= 16  # the depth-wise convolutions are there
    norms = sum(isinstance(m, LayerNorm) for m in onnx_export[1].modules())
    assert norms and sum(node.op_type == "LayerNormalization" for node in graph.node) == norms


def test_images_smaller_than_the_graph_takes_are_refused(onnx_export) -> None:
    """Sides of 8 or less make the lowest level 1 x 1, which the trace specialised away: refused, not guessed."""
    path, _, _ = onnx_export
    session = OnnxModel(path)
    for height, width in ((5, 40), (8, 8), (40, 3)):
        with pytest.raises(ExportError, match=f"a {height}x{width} image is smaller than an exported model takes"):
            session(_images(1, height, width))


def test_the_model_itself_exports_with_free_height_and_width() -> None:
    """torch.export of DRSformer as it is (no wrapper): the pad-to-8 must be in the graph, not specialised away
    at the traced size, which is a multiple of 8."""
    model = DRSformer(**SMALL, mefc=False).eval().set_impl("fast")
    model.layout_impl = "reference"
    dims = {"x": {2: torch.export.Dim("h", min=9, max=1024), 3: torch.export.Dim("w", min=9, max=1024)}}
    program = torch.export.export(model, (_images(1, 64, 64),), dynamic_shapes=dims, strict=False)
    image = _images(1, 77, 131)
    with torch.inference_mode():
        assert (program.module()(image) - model(image)).abs().max().item() < 1e-5


def test_reflect_by_indexing_equals_reflect_padding() -> None:
    x = torch.rand(2, 3, 13, 17)
    for pad_h, pad_w in ((0, 0), (3, 0), (0, 7), (7, 5), (12, 16)):
        assert torch.equal(reflect_by_indexing(x, pad_h, pad_w), F.pad(x, (0, pad_w, 0, pad_h), mode="reflect"))
    assert torch.equal(crop_to(x, (5, 9)), x[..., :5, :9])


def test_pt2_in_bf16_within_its_stated_bound(tmp_path, capsys) -> None:
    weights, model = _weights(tmp_path, mefc=False)
    out = tmp_path / "small.pt2"
    assert main(["export", "--weights", str(weights), "-o", str(out), "--precision", "bf16"]) == 0
    assert "within 6e-02" in capsys.readouterr().out
    program = Pt2Model(out)
    image = _images(1, 77, 131)
    with torch.inference_mode():
        difference = (program(image) - model(image)).abs().max().item()
    assert 1e-5 < difference <= verify.BOUNDS["bf16"]  # really bf16 inside, and within the bound


def test_a_file_that_fails_its_check_is_not_kept(tmp_path, capsys, monkeypatch) -> None:
    weights, _ = _weights(tmp_path, mefc=False)
    out = tmp_path / "small.pt2"
    monkeypatch.setitem(verify.BOUNDS, "fp32", 1e-12)  # stricter than fp32 rounding: the check must fail
    assert main(["export", "--weights", str(weights), "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert "differs from PyTorch by" in err and "nothing was kept" in err
    assert list(tmp_path.iterdir()) == [weights]


def test_verify_fails_a_wrong_file_and_tells_ties_apart() -> None:
    model = DRSformer(**SMALL, mefc=False).eval()
    sizes = [(1, 40, 24)]
    passed, checks = verify.verify(lambda x: model(x) + 3e-4, model, sizes)
    assert not passed and len(checks) == 1 and checks[0].verdict == "FAIL"  # no tie explains it: no retry
    assert checks[0].gap >= verify.TIE_GAP and checks[0].row().endswith("FAIL")
    assert "differs from PyTorch by 3.00e-04 at 40x24" in verify.failure(checks)
    passed, checks = verify.verify(lambda x: model(x), model, sizes)
    assert passed and checks[0].verdict == "ok"
    # A difference where two scores sit within rounding at a top-k threshold: not a verdict on the file.
    tie = verify.InputCheck(1, 40, 24, 0, difference=2e-3, gap=3e-8, bound=1e-4)
    assert tie.verdict == "top-k tie" and "top-k tie on each of" in verify.failure([tie])


def test_smallest_topk_gap_finds_a_planted_tie() -> None:
    model = DRSformer(**SMALL, mefc=False).eval()
    image = _images(1, 24, 24)
    assert verify.smallest_topk_gap(model, image) > 1e-4
    # Identical q rows for two channels of a head make their scores with every k equal: a gap of exactly 0.
    attn = model.encoder_level1[0].attn
    with torch.no_grad():
        attn.qkv_dwconv.weight[8 + 1] = attn.qkv_dwconv.weight[8 + 0]  # k channels 0 and 1 of head 0
        attn.qkv.weight[8 + 1] = attn.qkv.weight[8 + 0]
    assert verify.smallest_topk_gap(model, image) == 0.0


def test_derain_with_onnxruntime_matches_pytorch(onnx_export, tmp_path, capsys) -> None:
    path, model, _ = onnx_export
    weights = tmp_path / "w.pth"
    torch.save({"params": model.state_dict()}, weights)
    rng = np.random.default_rng(0)
    photos = tmp_path / "photos"
    write_image(photos / "a.png", rng.integers(0, 256, (45, 70, 3), dtype=np.uint8))
    write_image(photos / "b.jpg", rng.integers(0, 256, (64, 33, 3), dtype=np.uint8))
    onnx_out, torch_out = tmp_path / "onnx", tmp_path / "torch"
    assert (
        main(["derain", "--model", str(path), "-i", str(photos), "-o", str(onnx_out), "--quiet", "--self-ensemble"])
        == 0
    )  # fmt: skip  (--backend auto: onnxruntime, as --model is given)
    assert main(["derain", "--weights", str(weights), "-i", str(photos), "-o", str(torch_out), "--quiet",
                 "--self-ensemble", "--tile", "0"]) == 0  # fmt: skip
    assert "onnxruntime, whole images, fp32, self-ensemble" in capsys.readouterr().err
    for name in ("a.png", "b.jpg"):
        a, b = read_image(onnx_out / name).astype(int), read_image(torch_out / name).astype(int)
        assert a.shape == b.shape and np.abs(a - b).max() <= 1  # rounding of values within 1e-6 of a half level


@pytest.mark.parametrize(
    "options, message",
    [
        (["--backend", "onnxruntime"], "needs --model FILE.onnx"),
        (["--backend", "onnxruntime", "--model", "{onnx}", "--tile", "256"], "an ONNX file runs whole images"),
        (["--backend", "onnxruntime", "--model", "{onnx}", "--precision", "bf16"], "precision it was exported with"),
        (["--backend", "onnxruntime", "--model", "{onnx}", "--weights", "w.pth"], "belong to the pytorch backend"),
        (["--backend", "pytorch", "--model", "{onnx}"], "--backend pytorch reads --weights"),
        ([], "--weights is required"),
    ],
)
def test_derain_backend_options_are_checked(onnx_export, tmp_path, capsys, options, message) -> None:
    path, _, _ = onnx_export
    photo = tmp_path / "a.png"
    write_image(photo, np.zeros((16, 16, 3), np.uint8))
    argv = ["derain", "-i", str(photo), "-o", str(tmp_path / "out"), *[o.format(onnx=path) for o in options]]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def test_a_file_onnxruntime_cannot_read_is_one_line(tmp_path) -> None:
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x08\x07 not a protobuf graph" * 10)
    with pytest.raises(CheckpointError, match="bad.onnx: not an ONNX model ONNX Runtime can run"):
        OnnxModel(bad)
    with pytest.raises(CheckpointError, match="bad.pt2: not a torch.export file"):
        bad.rename(tmp_path / "bad.pt2")
        Pt2Model(tmp_path / "bad.pt2")


def test_export_options_are_checked(tmp_path, capsys) -> None:
    weights, _ = _weights(tmp_path, mefc=False)
    cases = [
        (["-o", str(tmp_path / "m.bin")], "unknown suffix .bin"),
        (["-o", str(tmp_path / "m.pt2"), "--opset", "17"], "--opset applies to --format onnx only"),
        (["-o", str(tmp_path / "m.onnx"), "--size", "4"], "--size must be at least 9x9"),
        (["-o", str(tmp_path / "m.onnx"), "--precision", "bf16"], "ONNX Runtime has no bf16 kernels"),
        (["-o", str(tmp_path / "m.safetensors"), "--precision", "fp16"], "converts weights as they are"),
    ]
    for options, message in cases:
        assert main(["export", "--weights", str(weights), *options]) == 2
        assert message in capsys.readouterr().err


def test_weights_convert_between_pth_and_safetensors(tmp_path, capsys) -> None:
    weights, model = _weights(tmp_path, mefc=True)
    st, back = tmp_path / "small.safetensors", tmp_path / "back.pth"
    assert main(["export", "--weights", str(weights), "-o", str(st)]) == 0
    assert main(["export", "--weights", str(st), "-o", str(back)]) == 0
    assert "read back bit-identical" in capsys.readouterr().out
    restored = torch.load(back, weights_only=True)["params"]
    assert restored.keys() == model.state_dict().keys()
    assert all(torch.equal(restored[k], v) for k, v in model.state_dict().items())


def test_missing_extra_is_one_line_naming_it(monkeypatch, tmp_path) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # as if not installed
    with pytest.raises(MissingDependency, match=r"pip install 'drsformer\[export\]'"):
        require("onnxruntime", "running ONNX files")
    with pytest.raises(MissingDependency, match="running ONNX files needs the Python package 'onnxruntime'"):
        OnnxModel(tmp_path / "x.onnx")
