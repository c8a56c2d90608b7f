"""Load published or our own DRSformer weights: read safely, infer the architecture, load strictly.

A published checkpoint is ``{'params': state_dict}`` (sometimes also ``params_ema``); every constructor argument
of :class:`~drsformer.archs.DRSformer` can be read back from the key names and tensor shapes.
"""

from __future__ import annotations

import math
import os
import re
import warnings
from collections import Counter
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from ..errors import CheckpointError, ConfigError
from .attention import PAPER_RATIOS, format_ratios
from .drsformer import DRSformer, architecture_name
from .restormer import RESTORMER_ARGUMENTS, Restormer
from .unet import DECODER_LEVELS, ENCODERS, REFINEMENT
from .weight_files import ARCHITECTURE_KEY, VALIDATED_KEY, WRAPPER_KEYS, read_checkpoint


class CheckpointNote(UserWarning):
    """How a checkpoint was read, when it is worth a line (the commands print it)."""


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


def _stage_blocks(state: Mapping[str, Tensor]) -> Counter[str]:
    """How many numbered blocks each stage (and ``refinement``) holds."""
    counts: Counter[str] = Counter()
    for name in state:
        stage, _, rest = name.partition(".")
        index = rest.split(".", 1)[0]
        if (stage in ENCODERS or stage in DECODER_LEVELS or stage == REFINEMENT) and index.isdigit():
            counts[stage] = max(counts[stage], int(index) + 1)
    return counts


def infer_ffn(state: Mapping[str, Tensor], source: str = "checkpoint") -> str:
    """Which feed-forward network the blocks have, from the first block's keys and shapes."""
    prefix = f"{ENCODERS[0]}.0.ffn."
    if f"{prefix}dwconv3x3.weight" in state:
        return "msfn"
    if f"{prefix}dwconv.weight" in state:
        expand = _shape(state, f"{prefix}project_in.weight", source, 4)[0]
        reduce = _shape(state, f"{prefix}project_out.weight", source, 4)[1]
        return "gdfn" if expand == 2 * reduce else "dfn"
    if f"{prefix}project_in.weight" in state:
        return "fn"
    raise CheckpointError(f"{source}: no feed-forward network found under {prefix} ({_describe(state)})")


def mixing_scalars(state: Mapping[str, Tensor]) -> int:
    """How many top-k mixing scalars (``attn1``, ``attn2``...) the first attention layer holds (0: dense)."""
    count = 0
    while f"{ENCODERS[0]}.0.attn.attn{count + 1}" in state:
        count += 1
    return count


def infer_config(
    state: Mapping[str, Tensor], source: str = "checkpoint", known: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """Constructor arguments of the network (:class:`~drsformer.archs.DRSformer`'s family) whose state dict is
    ``state``: every one is read from the keys and shapes, except the top-k ratios of attention with other than
    the paper's four, which come from ``known`` (what the file says it was built with, or the caller)."""
    known = known or {}
    embed = _shape(state, "patch_embed.proj.weight", source, 4)
    out = _shape(state, "output.weight", source, 4)
    dim = embed[0]
    counts = _stage_blocks(state)
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
    ffn = infer_ffn(state, source)
    halve = 2 if ffn in ("msfn", "gdfn") else 1  # the FFN's first 1x1 expands to 2 x hidden
    hidden = [_shape(state, f"{s}.0.ffn.project_in.weight", source, 4)[0] // halve for s in ENCODERS]
    mefc = any(k.startswith("encoder_level0.") for k in state)
    mixing = mixing_scalars(state)
    config = dict(
        inp_channels=int(embed[1]),
        out_channels=int(out[0]),
        dim=int(dim),
        num_blocks=num_blocks,
        heads=[int(h) for h in heads],
        ffn_expansion_factor=infer_ffn_factor(widths, hidden, source),
        bias="encoder_level1.0.attn.qkv.bias" in state,
        LayerNorm_type="WithBias" if "encoder_level1.0.norm1.body.bias" in state else "BiasFree",
        mefc=mefc,
        attention="topk" if mixing else "dense",
        topk_ratios=list(PAPER_RATIOS),
        ffn=ffn,
        num_refinement_blocks=0 if mefc else counts[REFINEMENT],
        dual_pixel_task="skip_conv.weight" in state,
    )
    if not mixing and "topk_ratios" in known:  # unused by dense attention; kept as the file says
        config["topk_ratios"] = format_ratios(known["topk_ratios"])
    elif mixing and (mixing != len(PAPER_RATIOS) or "topk_ratios" in known):
        ratios = known.get("topk_ratios")
        if ratios is None or len(ratios) != mixing:
            raise CheckpointError(
                f"{source}: its attention mixes {mixing} top-k ratios (attn1..attn{mixing}), and which ones is not "
                "in its keys; files this package's training writes carry them, or give topk_ratios "
                "(from_checkpoint(..., topk_ratios=[...]))"
            )
        config["topk_ratios"] = format_ratios(ratios)
    return config


def checkpoint_notes(config: Mapping[str, Any], source: str) -> list[str]:
    """What a user should know about how a file was read: a DRSformer without top-k mixing scalars is read as
    dense attention."""
    if config["attention"] == "dense" and config["ffn"] == "msfn":
        return [
            f"{source}: a DRSformer without the top-k mixing scalars attn1..attn4, loaded as dense attention (every "
            "score kept), what such a file computes; the authors' Rain100L upload (their issue #4) is one, and what "
            "it was trained as is not known"
        ]
    return []


def build_from_config(config: Mapping[str, Any], source: str) -> DRSformer:
    """The network a configuration describes: a :class:`Restormer` when it is one, else a DRSformer."""
    try:
        if architecture_name(config) == "Restormer":
            return Restormer(**{k: config[k] for k in RESTORMER_ARGUMENTS if k in config},
                             impl=config.get("impl", "fast"))  # fmt: skip
        return DRSformer(**config)
    except ConfigError as err:
        raise CheckpointError(f"{source}: its shapes describe no valid network ({err})") from None


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
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing keys: {_pattern_summary(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected keys: {_pattern_summary(unexpected)}")
    if problems:
        name = architecture_name(getattr(model, "config", {}))
        raise CheckpointError(f"{source}: does not match {name}; " + "; ".join(problems))
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
    and the notes to show (which weights the file chose, how it was read), one per line."""
    obj = read_checkpoint(path)
    chosen, note = weights_key(obj, key)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", CheckpointNote)
        model = from_checkpoint(obj, key=chosen, source=os.fspath(path), **overrides)
    notes = ([note] if note else []) + [str(w.message) for w in caught if issubclass(w.category, CheckpointNote)]
    return model, "\n".join(notes) or None


def from_checkpoint(
    checkpoint: str | os.PathLike | Mapping[str, Any],
    key: str = "params",
    map_location: str | torch.device = "cpu",
    source: str | None = None,
    **overrides: Any,
) -> DRSformer:
    """Builds the network a checkpoint was trained as (DRSformer, a variant of it, or Restormer: read from its keys
    and shapes) and loads it strictly.

    ``checkpoint`` is a file path, a wrapper dict such as ``{'params': ...}`` or a bare state dict; ``key``
    picks ``params`` or ``params_ema``; ``source`` names a dict's origin in messages. ``overrides`` replace
    inferred constructor arguments (``impl`` too). How the file was read, when a user should know, is a
    :class:`CheckpointNote` warning.
    """
    if isinstance(checkpoint, Mapping):
        source, obj = source or "state dict", checkpoint
    elif not isinstance(checkpoint, (str, os.PathLike)):
        raise CheckpointError(f"expected a checkpoint path or a state dict, got a {type(checkpoint).__name__}")
    else:
        source = os.fspath(checkpoint)
        obj = read_checkpoint(source, map_location=map_location)
    state = extract_state_dict(obj, key=key, source=source)
    stored = obj.get(ARCHITECTURE_KEY) if isinstance(obj, Mapping) else None
    known = {**(stored if isinstance(stored, Mapping) else {}), **overrides}
    config = {**infer_config(state, source, known), **overrides}
    for note in checkpoint_notes(config, source):
        warnings.warn(note, CheckpointNote, stacklevel=2)
    model = build_from_config(config, source)
    check_keys(model, state, source)
    model.load_state_dict(state, strict=True)
    return model
