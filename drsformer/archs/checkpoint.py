"""Load published or our own DRSformer weights: read safely, infer the architecture, load strictly.

A published checkpoint is ``{'params': state_dict}`` (sometimes also ``params_ema``); every constructor argument
of :class:`~drsformer.archs.DRSformer` can be read back from the key names and tensor shapes.
"""

from __future__ import annotations

import math
import os
import re
from collections import Counter
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from ..errors import CheckpointError, ConfigError
from .drsformer import DRSformer
from .unet import DECODER_LEVELS, ENCODERS
from .weight_files import VALIDATED_KEY, WRAPPER_KEYS, read_checkpoint

STRIP_PREFIXES = ("module.", "_orig_mod.")


def extract_state_dict(obj: Any, key: str = "params", source: str = "checkpoint") -> dict[str, Tensor]:
    """Picks ``obj[key]`` from a wrapper dict (or takes a bare state dict) and strips DDP/compile prefixes."""
    if isinstance(obj, Tensor):
        raise CheckpointError(f"{source}: holds a single tensor, not a dict of named weights")
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{source}: holds a {type(obj).__name__}, not a dict of named weights")
    if not obj:
        raise CheckpointError(f"{source}: holds an empty dict, no weights")
    if key in obj:
        state = obj[key]
        if not isinstance(state, Mapping):
            raise CheckpointError(f"{source}: {key!r} is a {type(state).__name__}, not a dict of named weights")
    elif all(isinstance(v, Tensor) for v in obj.values()):
        state = obj
    else:
        wrappers = [k for k in WRAPPER_KEYS if isinstance(obj.get(k), Mapping)]
        if wrappers:
            raise CheckpointError(f"{source}: has no {key!r} weights; it holds {', '.join(map(repr, wrappers))}")
        shown = ", ".join(repr(k)[:40] for k in list(obj)[:5])
        raise CheckpointError(f"{source}: no {key!r} state dict found (top-level keys: {shown})")
    if not state:
        raise CheckpointError(f"{source}: {key!r} is empty, no weights")
    clean: dict[str, Tensor] = {}
    for name, value in state.items():
        if not isinstance(name, str):
            raise CheckpointError(f"{source}: has a {type(name).__name__} key {name!r:.40}, not a parameter name")
        if not isinstance(value, Tensor):
            raise CheckpointError(f"{source}: entry {name!r} is a {type(value).__name__}, not a tensor")
        clean[strip_prefixes(name)] = value
    return clean


def strip_prefixes(name: str) -> str:
    """``name`` without any leading run of wrapper prefixes, in any order (``_orig_mod.module.x`` -> ``x``)."""
    stripped = True
    while stripped:
        stripped = False
        for prefix in STRIP_PREFIXES:
            if name.startswith(prefix):
                name, stripped = name[len(prefix) :], True
    return name


def _shape(state: Mapping[str, Tensor], key: str, source: str, ndim: int) -> torch.Size:
    """The shape of ``state[key]``, which must have ``ndim`` non-zero dimensions."""
    if key not in state:
        raise CheckpointError(f"{source}: not a DRSformer checkpoint, key {key!r} is missing ({_describe(state)})")
    shape = state[key].shape
    if len(shape) != ndim or not all(shape):
        raise CheckpointError(f"{source}: {key} has shape {list(shape)}; a DRSformer has {ndim} non-zero dimensions")
    return shape


def _describe(state: Mapping[str, Tensor]) -> str:
    if not state:
        return "the state dict is empty"
    if any(k.endswith("ffn.dwconv.weight") for k in state):
        return "its keys look like a Restormer checkpoint"
    return f"{len(state)} keys, e.g. {', '.join(list(state)[:3])}"


def infer_ffn_factor(dims: list[int], hidden: list[int], source: str = "checkpoint") -> float:
    """The simplest decimal f with ``int(d * f) == h`` for every (d, h) pair, as the model computes widths."""
    low = max(h / d for d, h in zip(dims, hidden, strict=True))
    high = min((h + 1) / d for d, h in zip(dims, hidden, strict=True))
    for decimals in range(0, 9):
        scale = 10**decimals
        candidate = math.ceil(low * scale - 1e-9) / scale
        for f in (candidate, candidate + 1 / scale):
            if f < high and all(int(d * f) == h for d, h in zip(dims, hidden, strict=True)):
                return f
    raise CheckpointError(f"{source}: no ffn_expansion_factor gives hidden widths {hidden} for widths {dims}")


def infer_config(state: Mapping[str, Tensor], source: str = "checkpoint") -> dict[str, Any]:
    """Constructor arguments of the DRSformer whose state dict is ``state``."""
    embed = _shape(state, "patch_embed.proj.weight", source, 4)
    out = _shape(state, "output.weight", source, 4)
    dim = embed[0]
    counts: Counter[str] = Counter()
    for name in state:
        stage, _, rest = name.partition(".")
        index = rest.split(".", 1)[0]
        if (stage in ENCODERS or stage in DECODER_LEVELS) and index.isdigit():
            counts[stage] = max(counts[stage], int(index) + 1)
    num_blocks = [counts[s] for s in ENCODERS]
    if not all(num_blocks):
        empty = [s for s, n in zip(ENCODERS, num_blocks, strict=True) if not n]
        raise CheckpointError(f"{source}: not a DRSformer checkpoint, no blocks for {', '.join(empty)}")
    for decoder, level in DECODER_LEVELS.items():
        if counts[decoder] != num_blocks[level - 1]:
            raise CheckpointError(
                f"{source}: {decoder} has {counts[decoder]} blocks but {ENCODERS[level - 1]} has "
                f"{num_blocks[level - 1]}; DRSformer decoders mirror the encoders"
            )
    heads = [_shape(state, f"{s}.0.attn.temperature", source, 3)[0] for s in ENCODERS]
    widths = [dim * 2**i for i in range(4)]
    hidden = [_shape(state, f"{s}.0.ffn.project_in.weight", source, 4)[0] // 2 for s in ENCODERS]
    return dict(
        inp_channels=int(embed[1]),
        out_channels=int(out[0]),
        dim=int(dim),
        num_blocks=num_blocks,
        heads=[int(h) for h in heads],
        ffn_expansion_factor=infer_ffn_factor(widths, hidden, source),
        bias="encoder_level1.0.attn.qkv.bias" in state,
        LayerNorm_type="WithBias" if "encoder_level1.0.norm1.body.bias" in state else "BiasFree",
        mefc=any(k.startswith(("encoder_level0.", "refinement.")) for k in state),
    )


def _pattern_summary(keys: list[str], limit: int = 3) -> str:
    patterns = Counter(re.sub(r"\d+", "*", k) for k in keys)
    shown = ", ".join(f"{p} (x{n})" if n > 1 else p for p, n in patterns.most_common(limit))
    more = len(patterns) - limit
    return shown + (f", and {more} more patterns" if more > 0 else "")


def check_keys(model: torch.nn.Module, state: Mapping[str, Tensor], source: str) -> None:
    """Raises a short :class:`CheckpointError` when ``state`` does not fit ``model`` exactly."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing and all(re.search(r"\.attn\.attn[1-4]$", k) for k in missing) and not unexpected:
        raise CheckpointError(
            f"{source}: lacks the top-k mixing scalars attn1..attn4 of all {len(missing) // 4} attention layers "
            "(the authors' mis-uploaded Rain100L checkpoint looks like this, DRSformer issue #4); "
            "the model cannot run without them, so use another checkpoint or retrain"
        )
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing keys: {_pattern_summary(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected keys: {_pattern_summary(unexpected)}")
    if problems:
        raise CheckpointError(f"{source}: does not match DRSformer; " + "; ".join(problems))
    for name, tensor in expected.items():
        found = state[name]
        if found.shape != tensor.shape:
            raise CheckpointError(
                f"{source}: {name} has shape {list(found.shape)} but the model expects {list(tensor.shape)}"
            )
        if found.layout != torch.strided or not found.is_floating_point():
            kind = found.dtype if found.layout == torch.strided else found.layout
            raise CheckpointError(f"{source}: {name} holds {kind} values; weights are dense floating-point tensors")


def weights_key(obj: Any, requested: str | None) -> tuple[str, str | None]:
    """The weights to load from a checkpoint ``obj``: ``requested``, else the ones the file says its run validated
    (``validated: params_ema`` in a run with EMA), else ``params``; and a note when the file chose."""
    if requested is not None:
        return requested, None
    chosen = obj.get(VALIDATED_KEY) if isinstance(obj, Mapping) else None
    if isinstance(chosen, str) and chosen != "params" and isinstance(obj.get(chosen), Mapping):
        return chosen, f"using {chosen}: the weights this run validated and chose net_g_best by (--params-key)"
    return "params", None


def load_model(path: str | os.PathLike, key: str | None = None, **overrides: Any) -> tuple[DRSformer, str | None]:
    """:func:`from_checkpoint` of a file, with ``key`` None choosing as :func:`weights_key` does; returns the model
    and the note to show when the file chose the weights."""
    obj = read_checkpoint(path)
    chosen, note = weights_key(obj, key)
    return from_checkpoint(obj, key=chosen, source=os.fspath(path), **overrides), note


def from_checkpoint(
    checkpoint: str | os.PathLike | Mapping[str, Any],
    key: str = "params",
    map_location: str | torch.device = "cpu",
    source: str | None = None,
    **overrides: Any,
) -> DRSformer:
    """Builds the DRSformer a checkpoint was trained as and loads it strictly.

    ``checkpoint`` is a file path, a wrapper dict such as ``{'params': ...}`` or a bare state dict; ``key``
    picks ``params`` or ``params_ema``; ``source`` names a dict's origin in messages. ``overrides`` replace
    inferred constructor arguments (``impl`` too).
    """
    if isinstance(checkpoint, Mapping):
        source, obj = source or "state dict", checkpoint
    elif not isinstance(checkpoint, (str, os.PathLike)):
        raise CheckpointError(f"expected a checkpoint path or a state dict, got a {type(checkpoint).__name__}")
    else:
        source = os.fspath(checkpoint)
        obj = read_checkpoint(source, map_location=map_location)
    state = extract_state_dict(obj, key=key, source=source)
    config = {**infer_config(state, source), **overrides}
    try:
        model = DRSformer(**config)
    except ConfigError as err:
        raise CheckpointError(f"{source}: its shapes describe no valid DRSformer ({err})") from None
    check_keys(model, state, source)
    model.load_state_dict(state, strict=True)
    return model
