"""safetensors weights: round trips, files written by others, the checksum, deterministic fuzzing of damaged files,
params/params_ema selection, training runs that save .safetensors, and the missing-extra error."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from test_bad_files import bit_flips, truncations
from test_train import _tiny_options

from drsformer.archs import DRSformer, from_checkpoint
from drsformer.archs.checkpoint import load_model
from drsformer.archs.weight_files import (
    DIGEST_ENTRY,
    PARAMS_KEY_ENTRY,
    read_checkpoint,
    read_safetensors,
    save_safetensors,
)
from drsformer.cli import main
from drsformer.config import load_options, resolve_options
from drsformer.data.io import write_image
from drsformer.engine.trainer import Trainer
from drsformer.errors import CheckpointError, ConfigError, MissingDependency
from drsformer.optional import require

SMALL = dict(dim=8, num_blocks=[1, 1, 1, 1], heads=[1, 2, 4, 8], mefc=False)  # the smallest file, for fuzzing


@pytest.fixture(scope="module")
def st():
    return pytest.importorskip("safetensors.torch")


def _same_state(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]) for k in a)


def _raw_file(header: dict | bytes, data: bytes = b"") -> bytes:
    """A safetensors file from a header (a dict, or raw header bytes) and a data section, unchecked."""
    text = header if isinstance(header, bytes) else json.dumps(header).encode()
    return len(text).to_bytes(8, "little") + text + data


def _entry(dtype: str = "F32", shape: tuple[int, ...] = (1,), offsets: tuple[int, int] = (0, 4)) -> dict:
    return {"dtype": dtype, "shape": list(shape), "data_offsets": list(offsets)}


def _header_end(data: bytes) -> int:
    return 8 + int.from_bytes(data[:8], "little")


def _refused(path: Path, blob: bytes) -> str | None:
    """Writes ``blob`` to ``path`` and reads it: None when it loads (as it was saved), else the one-line message of
    the CheckpointError, which must name the file."""
    path.write_bytes(blob)
    try:
        read_checkpoint(path)
    except CheckpointError as err:
        message = str(err)
        assert path.name in message and "\n" not in message, message
        return message
    return None


# ---------------------------------------------------------------- round trips and other writers' files


@pytest.mark.parametrize("mefc", [True, False])
def test_round_trip_gives_the_same_model(tmp_path, st, mefc: bool) -> None:
    model = DRSformer(**{**SMALL, "mefc": mefc}).eval()
    path = save_safetensors(tmp_path / "w.safetensors", model.state_dict())
    assert [p.name for p in tmp_path.iterdir()] == ["w.safetensors"]  # no temporary file left
    loaded = from_checkpoint(path).eval()
    assert loaded.config == model.config and loaded.config["mefc"] is mefc
    assert _same_state(loaded.state_dict(), model.state_dict())
    image = torch.rand(1, 3, 8, 8)
    with torch.no_grad():
        assert torch.equal(loaded(image), model(image))


def test_metadata_layout(tmp_path, st) -> None:
    from safetensors import safe_open

    path = save_safetensors(
        tmp_path / "w.safetensors",
        DRSformer(**SMALL).state_dict(),
        params_key="params_ema",
        metadata={"author": "me", "format": "np"},
    )
    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata()
    assert metadata.keys() == {"author", "format", PARAMS_KEY_ENTRY, DIGEST_ENTRY}
    assert metadata["format"] == "pt" and metadata[PARAMS_KEY_ENTRY] == "params_ema"  # ours take precedence
    assert len(metadata[DIGEST_ENTRY]) == 64 and int(metadata[DIGEST_ENTRY], 16) >= 0
    with pytest.raises(CheckpointError, match=r"bad\.safetensors: metadata entry 'epoch' must map a string"):
        save_safetensors(tmp_path / "bad.safetensors", {"a": torch.zeros(1)}, metadata={"epoch": 3})
    with pytest.raises(CheckpointError, match=r"bad\.safetensors: cannot save 'a', a int and not a dense tensor"):
        save_safetensors(tmp_path / "bad.safetensors", {"a": 3})
    assert not (tmp_path / "bad.safetensors").exists()


def test_a_file_written_by_anyone_loads(tmp_path, st, weights) -> None:
    published = torch.load(weights, weights_only=True)["params"]
    path = tmp_path / "third_party.safetensors"
    st.save_file(published, path)
    assert read_checkpoint(path).keys() == {"params"}  # no metadata: nothing says which weights, so 'params'
    model, note = load_model(path)
    assert note is None and _same_state(model.state_dict(), published)
    # Tools that keep the metadata when they re-save (in their own layout) keep the checksum valid.
    ours = save_safetensors(tmp_path / "ours.safetensors", published)
    with st.safe_open(str(ours), framework="pt") as f:
        metadata = f.metadata()
    st.save_file({k: v.clone() for k, v in reversed(published.items())}, tmp_path / "resaved.safetensors", metadata)
    assert _same_state(from_checkpoint(tmp_path / "resaved.safetensors").state_dict(), published)


def test_a_safetensors_file_is_recognised_whatever_its_name(tmp_path, st) -> None:
    state = DRSformer(**SMALL).state_dict()
    st.save_file(state, tmp_path / "renamed.pth")
    assert _same_state(from_checkpoint(tmp_path / "renamed.pth").state_dict(), state)
    save_safetensors(tmp_path / "weights", state)
    assert _same_state(load_model(tmp_path / "weights")[0].state_dict(), state)
    assert main(["info", "--weights", str(tmp_path / "renamed.pth"), "--size", "16", "--json"]) == 0


# ---------------------------------------------------------------- which weights


def test_params_key_selection(tmp_path, st, capsys) -> None:
    ema = DRSformer(**SMALL).state_dict()
    path = save_safetensors(tmp_path / "net_g_best.safetensors", ema, params_key="params_ema")
    model, note = load_model(path)  # the weights the run validated, by default, with a note saying so
    assert _same_state(model.state_dict(), ema) and note.startswith("using params_ema: the weights this run validated")
    assert load_model(path, "params_ema")[1] is None
    for load in (lambda: load_model(path, "params"), lambda: from_checkpoint(path)):
        with pytest.raises(CheckpointError, match=r"net_g_best\.safetensors: has no 'params' weights; it holds "):
            load()
    plain = save_safetensors(tmp_path / "plain.safetensors", ema)
    assert read_checkpoint(plain)["validated"] == "params" and load_model(plain)[1] is None
    with pytest.raises(CheckpointError, match=r"plain\.safetensors: has no 'params_ema' weights; it holds 'params'"):
        from_checkpoint(plain, key="params_ema")
    assert main(["info", "--weights", str(path), "--params-key", "params"]) == 2
    assert "has no 'params' weights; it holds 'params_ema'" in capsys.readouterr().err
    # A params key that is not a name of weights is refused, as a damaged header would be.
    with pytest.raises(CheckpointError, match=r"weights: drsformer\.params_key is 'weights', expected one of params"):
        save_safetensors(tmp_path / "weights", ema, params_key="weights")
    odd = tmp_path / "odd.safetensors"
    st.save_file({"a": torch.zeros(1)}, odd, {PARAMS_KEY_ENTRY: "validated"})
    with pytest.raises(CheckpointError, match=r"odd\.safetensors: drsformer\.params_key is 'validated'"):
        read_safetensors(odd)


# ---------------------------------------------------------------- damaged files


@pytest.fixture(scope="module")
def small_state() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return DRSformer(**SMALL).state_dict()


@pytest.fixture(scope="module")
def small_file(tmp_path_factory, small_state, st) -> bytes:
    return save_safetensors(tmp_path_factory.mktemp("small") / "w.safetensors", small_state).read_bytes()


def test_truncated_files_are_refused(tmp_path, small_file) -> None:
    cuts = list(truncations(small_file, 150))
    assert len(cuts) > 150
    assert all(_refused(tmp_path / "cut.safetensors", blob) for blob in cuts)


def test_random_bytes_are_refused(tmp_path, st) -> None:
    rng = np.random.default_rng(21)
    looks_right = (64).to_bytes(8, "little") + b"{"  # a header length and the header's first byte
    blobs = [
        prefix + rng.integers(0, 256, length, dtype=np.uint8).tobytes()
        for length in (1, 7, 8, 64, 500, 4096)
        for prefix in (b"", looks_right)
        for _ in range(6)
    ]
    assert all(_refused(tmp_path / "noise.safetensors", blob) for blob in blobs)
    # Under another name only the look of a safetensors file sends it to this reader: refused all the same.
    assert all(_refused(tmp_path / "noise.pth", looks_right + blob) for blob in blobs)


@pytest.mark.parametrize(
    "case, blob",
    [
        ("bad_json", _raw_file(b'{"a": {"dtype": "F32",', bytes(4))),
        ("not_an_object", _raw_file(b'{"a": [1, 2]}   ', bytes(4))),
        ("offsets_out_of_range", _raw_file({"a": _entry(shape=(2,), offsets=(0, 8))}, bytes(4))),
        ("offsets_overlap", _raw_file({"a": _entry(), "b": _entry()}, bytes(4))),
        ("unknown_dtype", _raw_file({"a": _entry(dtype="F33")}, bytes(4))),
        ("shape_against_offsets", _raw_file({"a": _entry(shape=(3,), offsets=(0, 8))}, bytes(8))),
        ("header_longer_than_file", (10**6).to_bytes(8, "little") + b'{"a": 1}'),
        ("metadata_not_strings", _raw_file({"__metadata__": {"epoch": 3}})),
        ("no_weights", _raw_file({})),
    ],
)
def test_malformed_headers_are_refused(tmp_path, st, case: str, blob: bytes) -> None:
    path = tmp_path / f"{case}.safetensors"
    path.write_bytes(blob)
    with pytest.raises(CheckpointError, match=rf"^{re.escape(str(path))}: ") as info:
        from_checkpoint(path)
    assert "\n" not in str(info.value)


def test_header_bit_flips_are_refused_or_harmless(tmp_path, small_file, small_state) -> None:
    end = _header_end(small_file)
    flips = [head + small_file[end:] for head in bit_flips(small_file[:end], 300, seed=4)]
    results = [_refused(tmp_path / "flipped.safetensors", blob) for blob in flips]
    # A flip that still parses changed a name, shape, dtype or metadata value, which the checksum covers; or the
    # checksum's own key, which leaves an unchecked file with the very same weights.
    loaded = [blob for blob, message in zip(flips, results, strict=True) if message is None]
    for blob in loaded:
        (tmp_path / "loaded.safetensors").write_bytes(blob)
        assert _same_state(read_checkpoint(tmp_path / "loaded.safetensors")["params"], small_state)
    assert len(loaded) < 10


def test_data_bit_flips_are_caught_by_the_checksum(tmp_path, small_file, small_state, st) -> None:
    end = _header_end(small_file)
    flips = list(bit_flips(small_file, 60, seed=9, start=end))
    messages = [_refused(tmp_path / "flipped.safetensors", blob) for blob in flips]
    expected = f"{tmp_path / 'flipped.safetensors'}: corrupt, its tensor data does not match the checksum it was saved"
    assert all(message == f"{expected} with" for message in messages)
    # Without the checksum (anyone else's file) the same flips would load as other weights.
    plain = st.save(small_state)
    start = _header_end(plain)
    loaded = [read_safetensors(_write(tmp_path / "p.safetensors", b))["params"] for b in bit_flips(plain, 20, 9, start)]
    assert any(not _same_state(state, small_state) for state in loaded)


def _write(path: Path, blob: bytes) -> Path:
    path.write_bytes(blob)
    return path


# ---------------------------------------------------------------- training runs


def test_a_run_saves_prunes_and_serves_safetensors(tmp_path, st, capsys) -> None:
    options = _tiny_options(
        tmp_path,
        train={"total_iter": 2, "ema_decay": 0.5},
        val={"val_freq": 2},
        logger={"save_checkpoint_freq": 1, "keep_checkpoints": 1, "weights_format": "safetensors"},
    )
    Trainer(resolve_options(load_options(options)).options).run(progress_bar=False)
    run = tmp_path / "run"
    names = sorted(p.name for p in (run / "models").iterdir())
    assert names == ["net_g_2.safetensors", "net_g_best.safetensors", "net_g_latest.safetensors"]  # 1 pruned
    assert sorted(p.name for p in (run / "training_states").iterdir()) == ["2.state"]
    log = (run / "train.log").read_text()
    assert "saved net_g_1.safetensors and training_states/1.state" in log
    assert "saved net_g_2.safetensors and training_states/2.state" in log and ".pth" not in log
    assert "(EMA weights, net_g_best.safetensors)" in log
    # The file holds the weights the run validated, the EMA ones, and says so; the training state is unchanged.
    state = torch.load(run / "training_states/2.state", weights_only=True)
    latest = run / "models/net_g_latest.safetensors"
    assert read_checkpoint(latest).keys() == {"params_ema", "validated", "architecture"}
    model, note = load_model(latest)
    assert note and _same_state(model.state_dict(), state["params_ema"])
    write_image(tmp_path / "x.png", np.random.default_rng(1).integers(0, 256, (16, 20, 3), dtype=np.uint8))
    capsys.readouterr()
    argv = ["derain", "--weights", str(latest), "-i", str(tmp_path / "x.png"), "-o", str(tmp_path / "out"), "--quiet"]
    assert main(argv) == 0 and (tmp_path / "out/x.png").is_file()
    assert "using params_ema: the weights this run validated" in capsys.readouterr().err


def test_the_weights_format_is_checked(tmp_path) -> None:
    options = _tiny_options(tmp_path, logger={"weights_format": "onnx"})
    with pytest.raises(ConfigError, match=r"^logger\.weights_format: expected one of pth, safetensors, got 'onnx'$"):
        resolve_options(load_options(options))
    default = resolve_options(load_options(_tiny_options(tmp_path))).options
    assert default["logger"]["weights_format"] == "pth"


# ---------------------------------------------------------------- without the extra


def test_a_missing_package_names_the_extra(tmp_path, monkeypatch, capsys) -> None:
    path = _write(tmp_path / "w.safetensors", _raw_file({}))
    monkeypatch.setitem(sys.modules, "safetensors", None)  # the import system now reports it as not installed
    with pytest.raises(MissingDependency, match=r"^reading \.safetensors weights needs the Python package "):
        require("safetensors", "reading .safetensors weights")
    with pytest.raises(MissingDependency, match=r"pip install 'drsformer\[export\]'"):
        read_checkpoint(path)
    with pytest.raises(MissingDependency, match=r"^writing \.safetensors weights needs"):
        save_safetensors(tmp_path / "new.safetensors", {"a": torch.zeros(1)})
    assert main(["info", "--weights", str(path)]) == 2
    err = capsys.readouterr().err
    assert "drsformer[export]" in err and err.count("\n") == 1


def test_weights_read_stay_the_same_when_the_file_is_rewritten_in_place(tmp_path, small_file, small_state) -> None:
    path = _write(tmp_path / "w.safetensors", small_file)
    state = read_checkpoint(path)["params"]
    with open(path, "r+b") as f:  # the same file (not a new one renamed over it), as `cp` would rewrite it
        f.seek(_header_end(small_file))
        f.write(bytes(len(small_file) - _header_end(small_file)))
    assert _same_state(state, small_state)
