"""Mixture-of-experts feature compensator (MEFC).

A router (global average pool -> MLP -> softmax) gives, per image, a weight for each of 8 expert operations at
each of 4 steps. Each step runs the 8 experts on its input, scales each output by its weight, fuses them with a
1x1 conv + ReLU and adds a residual (ReLU again). The experts are separable convs (1, 3, 5, 7), dilated
separable convs (3, 5, 7, dilation 2) and a 3x3 average pool.

Attribute names (``layers``, ``_ops``, ``_out``, ``op``, ``preprocess``, ``ca_fc``) reproduce the published
state-dict keys, e.g. ``encoder_level0.layers.1._ops.0._ops.3.op.4.weight``, so official checkpoints load as
they are.

The fast path is exact algebra on the same parameters: each expert's last 1x1 conv, its routing weight and its
block of the fusing 1x1 conv are linear maps in a row, so they are composed into one C x C block per expert and
image (computed once per forward from the weights): the seven per-expert 1x1 convs and the scaling of the
experts' outputs disappear. On CPU, the experts' depth-wise convolutions get :func:`depthwise_conv2d`'s faster
weight gradient.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .channel_mixing import mix_channels
from .depthwise import depthwise_conv2d

# Kernel sizes of the separable and the dilated (dilation 2) experts, in the published order; the 8th is avg-pool.
SEPARABLE_KERNELS = (1, 3, 5, 7)
DILATED_KERNELS = (3, 5, 7)
NUM_EXPERTS = len(SEPARABLE_KERNELS) + len(DILATED_KERNELS) + 1
NUM_STEPS = 4


def conv_radius(conv: nn.Conv2d) -> int:
    """How many pixels around its centre a (square) convolution reads."""
    return conv.dilation[0] * (conv.kernel_size[0] - 1) // 2


def _as_conv(module: nn.Module) -> nn.Conv2d:
    """``module``, a convolution of a Sequential (whose items are typed as plain modules)."""
    assert isinstance(module, nn.Conv2d)
    return module


def _apply_depthwise(conv: nn.Module, x: Tensor) -> Tensor:
    """A depth-wise convolution of this module, through :func:`depthwise_conv2d` (its faster weight gradient)."""
    conv = _as_conv(conv)
    assert isinstance(conv.padding, tuple)  # built with integer padding, not "same"
    return depthwise_conv2d(x, conv.weight, conv.bias, conv.padding, conv.dilation)


def _depthwise(channels: int, kernel: int, dilation: int = 1) -> nn.Conv2d:
    pad = dilation * (kernel - 1) // 2
    return nn.Conv2d(channels, channels, kernel, padding=pad, dilation=dilation, groups=channels, bias=False)


def _pointwise(channels: int) -> nn.Conv2d:
    return nn.Conv2d(channels, channels, 1, bias=False)


class SeparableExpert(nn.Module):
    """depthwise k x k -> 1x1 -> ReLU -> depthwise k x k -> 1x1 (``op.0``, ``op.1``, ``op.3``, ``op.4``)."""

    def __init__(self, channels: int, kernel: int) -> None:
        super().__init__()
        self.op = nn.Sequential(
            _depthwise(channels, kernel),
            _pointwise(channels),
            nn.ReLU(),
            _depthwise(channels, kernel),
            _pointwise(channels),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.op(x)

    def features(self, x: Tensor) -> Tensor:
        """Everything up to the last 1x1 conv."""
        return _apply_depthwise(self.op[3], self.op[2](self.op[1](_apply_depthwise(self.op[0], x))))

    def receptive_radius(self) -> int:
        return conv_radius(_as_conv(self.op[0])) + conv_radius(_as_conv(self.op[3]))


class DilatedExpert(nn.Module):
    """dilated (2) depthwise k x k -> 1x1 (``op.0``, ``op.1``)."""

    def __init__(self, channels: int, kernel: int) -> None:
        super().__init__()
        self.op = nn.Sequential(_depthwise(channels, kernel, dilation=2), _pointwise(channels))

    def forward(self, x: Tensor) -> Tensor:
        return self.op(x)

    def features(self, x: Tensor) -> Tensor:
        """Everything up to the last 1x1 conv."""
        return _apply_depthwise(self.op[0], x)

    def receptive_radius(self) -> int:
        return conv_radius(_as_conv(self.op[0]))


class AveragePoolExpert(nn.Module):
    """3x3 average pool, padding not counted; no parameters."""

    def forward(self, x: Tensor) -> Tensor:
        return F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)

    def receptive_radius(self) -> int:
        return 1


class ExpertRouter(nn.Module):
    """Per-image expert logits of shape (B, steps, experts) from the globally pooled features (``ca_fc``)."""

    def __init__(self, channels: int, steps: int = NUM_STEPS, experts: int = NUM_EXPERTS) -> None:
        super().__init__()
        self.steps, self.experts = steps, experts
        hidden = steps * experts * 2
        self.ca_fc = nn.Sequential(nn.Linear(channels, hidden), nn.ReLU(), nn.Linear(hidden, steps * experts))

    def from_mean(self, mean: Tensor) -> Tensor:
        """The logits from the per-image channel means (B, C)."""
        return self.ca_fc(mean).view(-1, self.steps, self.experts)

    def forward(self, x: Tensor) -> Tensor:
        return self.from_mean(x.mean(dim=(2, 3)))


def _as_convolving(module: nn.Module) -> SeparableExpert | DilatedExpert:
    """``module``, one of the seven experts that end in a 1x1 conv (a ModuleList's items are typed as plain modules)."""
    assert isinstance(module, (SeparableExpert, DilatedExpert))
    return module


def _as_expert(module: nn.Module) -> SeparableExpert | DilatedExpert | AveragePoolExpert:
    """``module``, one of a step's eight experts."""
    assert isinstance(module, (SeparableExpert, DilatedExpert, AveragePoolExpert))
    return module


class ExpertStep(nn.Module):
    """One step: 8 weighted experts, fused by 1x1 conv + ReLU (``_ops``, ``_out``)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        experts: list[nn.Module] = [SeparableExpert(channels, k) for k in SEPARABLE_KERNELS]
        experts += [DilatedExpert(channels, k) for k in DILATED_KERNELS]
        experts.append(AveragePoolExpert())
        self._ops = nn.ModuleList(experts)
        self._out = nn.Sequential(nn.Conv2d(channels * NUM_EXPERTS, channels, 1, bias=False), nn.ReLU())

    def forward_reference(self, x: Tensor, weights: Tensor) -> Tensor:
        """weights: (B, experts)."""
        outs = [op(x) * weights[:, i].view(-1, 1, 1, 1) for i, op in enumerate(self._ops)]
        return self._out(torch.cat(outs, dim=1))

    def forward_fast(self, x: Tensor, weights: Tensor) -> Tensor:
        c = x.shape[1]
        ops = self._ops
        convolving = [_as_convolving(op) for op in ops[:-1]]
        # Every expert up to (not including) its last 1x1 conv; the avg-pool expert has none.
        features = [op.features(x) for op in convolving] + [ops[-1](x)]
        # Each expert's last 1x1 conv composed with its block of the fusing conv: fuse_i @ last_i (C x C).
        fuse = _as_conv(self._out[0]).weight.view(c, NUM_EXPERTS, c)
        blocks = [fuse[:, i] @ _as_conv(op.op[-1]).weight.view(c, c) for i, op in enumerate(convolving)]
        composed = torch.stack(blocks + [fuse[:, -1]], dim=1)  # (C, experts, C)
        # The routing weights scale the columns of each expert's block: per image, folded into the weights.
        per_image = (composed[None] * weights[:, None, :, None].to(composed.dtype)).flatten(2)
        stacked = torch.cat(features, dim=1)
        if stacked.stride(1) != 1:  # NCHW (exported graphs, CUDA): one product for every image
            return mix_channels(per_image, stacked).relu_()
        # NHWC, eager CPU: oneDNN's 1x1 convolution, image by image, ran faster than the batched product
        if len(per_image) == 1:  # (slicing the one image would cost a zero-filled gradient of its size)
            return F.conv2d(stacked, per_image[0, ..., None, None]).relu_()
        images = stacked.split(1)
        return torch.cat(
            [F.conv2d(image, m[..., None, None]) for image, m in zip(images, per_image, strict=True)]
        ).relu_()

    def receptive_radius(self) -> int:
        return max(_as_expert(op).receptive_radius() for op in self._ops)


class ExpertPreprocess(nn.Module):
    """1x1 conv + ReLU (``preprocess.op``)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.op = nn.Sequential(nn.Conv2d(channels, channels, 1, bias=False), nn.ReLU())

    def forward(self, x: Tensor) -> Tensor:
        return self.op(x)


class ExpertSteps(nn.Module):
    """Preprocess, then ``steps`` residual expert steps."""

    def __init__(self, channels: int, steps: int = NUM_STEPS) -> None:
        super().__init__()
        self.preprocess = ExpertPreprocess(channels)
        self._ops = nn.ModuleList(ExpertStep(channels) for _ in range(steps))

    def forward(self, x: Tensor, weights: Tensor, fast: bool) -> Tensor:
        x = self.preprocess(x)
        for i, step in enumerate(self._ops):
            assert isinstance(step, ExpertStep)  # a ModuleList's items are typed as plain modules
            y = step.forward_fast(x, weights[:, i]) if fast else step.forward_reference(x, weights[:, i])
            x = (y + x).relu()
        return x

    def receptive_radius(self) -> int:
        radius = 0  # the 1x1 preprocess reads one pixel
        for step in self._ops:
            assert isinstance(step, ExpertStep)
            radius += step.receptive_radius()
        return radius


class MEFC(nn.Module):
    """The compensator: ``layers[0]`` routes, ``layers[1]`` runs the experts.

    The only global quantity is the router's input, the mean of each channel over the image: :meth:`route`
    turns it into expert weights and :meth:`compensate` is local (each pixel sees :data:`RADIUS` pixels around
    it: :meth:`receptive_radius`), which is how :mod:`drsformer.tiling` runs it tile by tile.
    """

    def __init__(self, channels: int, steps: int = NUM_STEPS, impl: str = "fast") -> None:
        super().__init__()
        self.impl = impl
        self.layers = nn.ModuleList([ExpertRouter(channels, steps), ExpertSteps(channels, steps)])

    def route(self, mean: Tensor) -> Tensor:
        """Expert weights (B, steps, experts) from the channel means (B, C) of the input."""
        router = self.layers[0]
        assert isinstance(router, ExpertRouter)  # a ModuleList's items are typed as plain modules
        return router.from_mean(mean).softmax(dim=-1)

    def compensate(self, x: Tensor, weights: Tensor) -> Tensor:
        return self.layers[1](x, weights, fast=self.impl == "fast")

    def forward(self, x: Tensor) -> Tensor:
        return self.compensate(x, self.route(x.mean(dim=(2, 3))))

    def receptive_radius(self) -> int:
        """Pixels around each output pixel that :meth:`compensate` reads (24 for the published experts)."""
        experts = self.layers[1]
        assert isinstance(experts, ExpertSteps)
        return experts.receptive_radius()
