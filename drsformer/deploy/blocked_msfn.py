"""The MSFN rearranged for ONNX Runtime's blocked convolutions, for exported graphs.

ONNX Runtime's CPU provider runs a convolution in its fast blocked layout (NCHWc) only when the channel counts
are multiples of its block (8 with AVX2, 16 with AVX-512), and a grouped convolution there only when it is
depth-wise. The published MSFN has neither: its widths are odd (2 x 127, 2 x 255...) and its second stage has two
input channels per group. :class:`BlockedMixedScaleFeedForward` computes the same maths from depth-wise and 1x1
convolutions whose channel counts are multiples of :data:`BLOCK`, the extra channels having zero weights:

- per half (``x1``, ``x2``), ``project_in``'s channels are computed as segments, each padded to ``BLOCK``;
- the pair-grouped convolution's output ``g`` reads ``cat([x_3, x_5])`` at ``2g`` and ``2g + 1``; it is written
  as two depth-wise convolutions of first-stage maps whose slots line up with ``g``, added;
- ``project_out`` is applied per piece and the pieces are summed.

With ``hidden = 2m`` a half's segments are its evens and odds, and both kernels run on each. With ``hidden = 2m +
1`` the 3x3 branch pairs (even, odd) channels and the 5x5 branch (odd, next even), so the evens are needed in
two alignments: the segments are the evens ``0, 2, .., 2m``, the odds ``1, 3, .., 2m - 1`` followed by channel 0,
and the evens from 2. Pair ``m`` reads the last 3x3 even and channel 0's 5x5 map; that map sits in the odds'
last slot, so their 3x3 map is computed with 5x5 kernels (the 3x3 ones zero-padded).

Zero weights add exact zeros, so the result differs from the grouped form by float rounding only (the order of
the additions). ONNX Runtime ran this form 1.4-2.7x faster per MSFN than the grouped one, and faster than eager
PyTorch's (docs/benchmarks.md).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor, nn

from ..archs.blocks import MixedScaleFeedForward

BLOCK = 16  # AVX-512's block; a multiple of AVX2's 8


def _padded(n: int) -> int:
    return -(-n // BLOCK) * BLOCK


@dataclass(frozen=True)
class _Map:
    """A first-stage map: ReLU of a depth-wise convolution of segment ``segment``; slot ``s`` uses the 3x3 or 5x5
    kernel (``kernels[s]``) of the half's channel ``channels[s]``."""

    segment: int
    channels: tuple[int, ...]
    kernels: tuple[int, ...]


@dataclass(frozen=True)
class _Piece:
    """Outputs ``outputs`` of the half's pair convolution: its first inputs in map ``first``, its second in
    ``second``, slot for slot."""

    first: int
    second: int
    outputs: tuple[int, ...]


def _half_plan(hidden: int) -> tuple[list[tuple[int, ...]], list[_Map], list[_Piece]]:
    """Segments (channel offsets within the half), first-stage maps and pieces for one half."""
    m = hidden // 2
    evens, odds = tuple(range(0, hidden, 2)), tuple(range(1, hidden, 2))
    if hidden % 2 == 0:
        segments = [evens, odds]
        maps = [_Map(s, segments[s], (k,) * m) for k in (3, 5) for s in (0, 1)]
        return segments, maps, [_Piece(0, 1, tuple(range(m))), _Piece(2, 3, tuple(range(m, hidden)))]
    odds_then_first, later_evens = odds + (0,), evens[1:]
    segments = [evens, odds_then_first, later_evens]
    maps = [
        _Map(0, evens, (3,) * (m + 1)),
        _Map(1, odds_then_first, (3,) * m + (5,)),  # pair m's second input: channel 0's 5x5 map
        _Map(1, odds, (5,) * m),
        _Map(2, later_evens, (5,) * m),
    ]
    return segments, maps, [_Piece(0, 1, tuple(range(m + 1))), _Piece(2, 3, tuple(range(m + 1, hidden)))]


def _conv(weight: Tensor, bias: Tensor | None, groups: int = 1) -> nn.Conv2d:
    out_channels, in_per_group, k, _ = weight.shape
    conv = nn.Conv2d(
        in_per_group * groups, out_channels, k, padding=k // 2, groups=groups, bias=bias is not None,
        dtype=weight.dtype, device=weight.device,
    )  # fmt: skip
    conv.weight.data.copy_(weight)
    if bias is not None:
        assert conv.bias is not None
        conv.bias.data.copy_(bias)
    return conv.requires_grad_(False)


def _rows(source: Tensor, index: tuple[int, ...], padded: int) -> Tensor:
    """``source[index]`` followed by zero rows up to ``padded``."""
    out = source.new_zeros((padded, *source.shape[1:]))
    out[: len(index)] = source[list(index)]
    return out


def _maybe_rows(source: Tensor | None, index: tuple[int, ...], padded: int) -> Tensor | None:
    return None if source is None else _rows(source, index, padded)


class _Half(nn.Module):
    """One half's segments, first-stage maps and pieces, as convolutions."""

    def __init__(self, ffn: MixedScaleFeedForward, half: int) -> None:
        super().__init__()
        hidden = ffn.hidden
        base = half * hidden
        pair_conv = ffn.dwconv3x3_1 if half == 0 else ffn.dwconv5x5_1
        segments, maps, pieces = _half_plan(hidden)
        width = _padded(max(len(s) for s in segments))
        w_in = ffn.project_in.weight.detach()
        b_in = None if ffn.project_in.bias is None else ffn.project_in.bias.detach()
        self.segments = nn.ModuleList(
            _conv(_rows(w_in, rows, width), _maybe_rows(b_in, rows, width))
            for rows in (tuple(base + c for c in segment) for segment in segments)
        )
        self.sources = [m.segment for m in maps]
        self.maps = nn.ModuleList(self._first_stage(ffn, base, m, width) for m in maps)
        self.inputs = [(p.first, p.second) for p in pieces]
        w_pair = pair_conv.weight.detach()
        b_pair = None if pair_conv.bias is None else pair_conv.bias.detach()
        self.first_inputs = nn.ModuleList(_conv(_rows(w_pair[:, :1], p.outputs, width), None, width) for p in pieces)
        self.second_inputs = nn.ModuleList(  # with the pair convolution's bias
            _conv(_rows(w_pair[:, 1:], p.outputs, width), _maybe_rows(b_pair, p.outputs, width), width) for p in pieces
        )
        w_out = ffn.project_out.weight.detach().transpose(0, 1)  # rows: project_out's input channels
        b_out = None if ffn.project_out.bias is None else ffn.project_out.bias.detach()
        self.columns = nn.ModuleList(  # project_out's bias goes with the first half's first piece
            _conv(
                _rows(w_out, tuple(base + g for g in p.outputs), width).transpose(0, 1),
                b_out if k == half == 0 else None,
            )
            for k, p in enumerate(pieces)
        )

    @staticmethod
    def _first_stage(ffn: MixedScaleFeedForward, base: int, plan: _Map, width: int) -> nn.Conv2d:
        size = max(plan.kernels)
        weight = ffn.dwconv5x5.weight.new_zeros(width, 1, size, size)
        has_bias = ffn.dwconv3x3.bias is not None
        bias = weight.new_zeros(width) if has_bias else None
        for slot, (channel, kernel) in enumerate(zip(plan.channels, plan.kernels, strict=True)):
            conv = ffn.dwconv3x3 if kernel == 3 else ffn.dwconv5x5
            margin = (size - kernel) // 2
            weight[slot, :, margin : size - margin, margin : size - margin] = conv.weight.detach()[base + channel]
            if bias is not None:
                bias[slot] = conv.bias.detach()[base + channel]  # type: ignore[union-attr]
        return _conv(weight, bias, width)

    def forward(self, x: Tensor) -> list[Tensor]:
        segments = [conv(x) for conv in self.segments]
        maps = [F.relu(conv(segments[s])) for s, conv in zip(self.sources, self.maps, strict=True)]
        pieces = []
        parts = zip(self.inputs, self.first_inputs, self.second_inputs, self.columns, strict=True)
        for (a, b), first, second, columns in parts:
            pieces.append(columns(F.relu(first(maps[a]) + second(maps[b]))))
        return pieces


class BlockedMixedScaleFeedForward(nn.Module):
    """An MSFN's maths in convolutions ONNX Runtime runs blocked; built from a trained
    :class:`~drsformer.archs.blocks.MixedScaleFeedForward` (its weights copied, frozen)."""

    def __init__(self, ffn: MixedScaleFeedForward) -> None:
        super().__init__()
        if ffn.hidden < 2:
            raise ValueError(f"an MSFN of hidden width {ffn.hidden} has no pairs to rearrange")
        self.halves = nn.ModuleList(_Half(ffn, half) for half in (0, 1))

    def forward(self, x: Tensor) -> Tensor:
        pieces = [piece for half in self.halves for piece in half(x)]
        out = pieces[0]
        for piece in pieces[1:]:
            out = out + piece
        return out


def block_msfns(model: nn.Module) -> int:
    """Replaces every MSFN of hidden width 2 or more in ``model`` by its blocked form; returns how many."""
    count = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, MixedScaleFeedForward) and child.hidden >= 2:
                setattr(parent, name, BlockedMixedScaleFeedForward(child))
                count += 1
    return count
