"""The depth-wise convolution with its weight gradient as a forward convolution, and MEFC's routed fusing
convolution folded into per-image weights: both equal the plain formulation in values and gradients."""

import pytest
import torch
import torch.nn.functional as F

from drsformer.archs.depthwise import PHASES_FROM_PADDING, depthwise_conv2d, dilated_by_phases
from drsformer.archs.mefc import ExpertStep


def _values_and_gradients(fn, inputs, seed_grad):
    out = fn(*inputs)
    return out, torch.autograd.grad(out, [t for t in inputs if t is not None], seed_grad)


def _graph_functions(out: torch.Tensor) -> set[str]:
    """The names of every backward function in ``out``'s graph."""
    seen, todo = set(), [out.grad_fn]
    while todo:
        node = todo.pop()
        if node is not None and node not in seen:
            seen.add(node)
            todo.extend(next_node for next_node, _ in node.next_functions)
    return {type(node).__name__ for node in seen}


@pytest.mark.parametrize("kernel, dilation", [(5, 1), (7, 1), (3, 2), (5, 2), (7, 2)])
@pytest.mark.parametrize("batch, channels_last, bias", [(1, False, True), (2, True, False), (3, True, True)])
def test_depthwise_gradients_equal_pytorchs(kernel, dilation, batch, channels_last, bias) -> None:
    torch.manual_seed(0)
    channels, height, width = 5, 9, 13
    x = torch.randn(batch, channels, height, width, dtype=torch.float64)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    weight = torch.randn(channels, 1, kernel, kernel, dtype=torch.float64)
    b = torch.randn(channels, dtype=torch.float64) if bias else None
    inputs = [t.requires_grad_() if t is not None else None for t in (x, weight, b)]
    padding = dilation * (kernel - 1) // 2
    seed_grad = torch.randn(batch, channels, height, width, dtype=torch.float64)

    ours, our_grads = _values_and_gradients(lambda *a: depthwise_conv2d(*a, padding, dilation), inputs, seed_grad)
    on_phases = padding >= PHASES_FROM_PADDING  # the 7x7 kernel at dilation 2: on the phases, still through ours
    assert "_DepthwiseConv2dBackward" in _graph_functions(ours)
    assert (type(ours.grad_fn).__name__ == "_DepthwiseConv2dBackward") != on_phases
    plain = lambda x, w, b: F.conv2d(x, w, b, padding=padding, dilation=dilation, groups=channels)  # noqa: E731
    theirs, their_grads = _values_and_gradients(plain, inputs, seed_grad)
    assert (ours - theirs).abs().max() < 1e-12
    for mine, reference in zip(our_grads, their_grads, strict=True):
        assert (mine - reference).abs().max() < 1e-12


def test_depthwise_gradient_in_float32_is_rounding_close() -> None:
    torch.manual_seed(0)
    x = torch.randn(2, 16, 40, 40).contiguous(memory_format=torch.channels_last)
    weight = torch.randn(16, 1, 5, 5)
    seed_grad = torch.randn(2, 16, 40, 40)
    leaves = [x.requires_grad_(), weight.requires_grad_()]
    ours = torch.autograd.grad(depthwise_conv2d(*leaves, None, 2), leaves, seed_grad)
    exact_leaves = [t.detach().double().requires_grad_() for t in leaves]
    exact_out = F.conv2d(*exact_leaves, padding=2, groups=16)
    exact = torch.autograd.grad(exact_out, exact_leaves, seed_grad.double())
    for mine, reference in zip(ours, exact, strict=True):
        assert (mine.double() - reference).abs().max() <= 1e-5 * reference.abs().max()


@pytest.mark.parametrize("case", ["3x3", "no grad", "fp16 autocast"])
def test_depthwise_falls_back_where_pytorchs_kernel_serves(case) -> None:
    """3x3 undilated kernels, inference and fp16 autocast run PyTorch's own convolution."""
    x = torch.randn(1, 4, 8, 8, requires_grad=True)
    size = 3 if case == "3x3" else 5
    weight = torch.randn(4, 1, size, size, requires_grad=True)
    if case == "no grad":
        with torch.no_grad():
            assert depthwise_conv2d(x, weight, None, size // 2).grad_fn is None
        return
    with torch.autocast("cpu", dtype=torch.float16, enabled=case == "fp16 autocast"):
        out = depthwise_conv2d(x, weight, None, size // 2)
    assert type(out.grad_fn).__name__ == "ConvolutionBackward0"


@pytest.mark.parametrize("kernel, dilation", [(7, 2), (3, 3), (5, 2), (3, 6), (9, 2)])
@pytest.mark.parametrize("height, width", [(16, 24), (17, 10), (5, 7)])
@pytest.mark.parametrize("channels_last", [True, False])
def test_dilated_convolution_on_phases_equals_the_dilated_one(kernel, dilation, height, width, channels_last) -> None:
    """Values and gradients (input, weight, bias) in float64, sides that are and are not multiples of the dilation,
    smaller than the kernel's reach, either layout (kept in the output)."""
    torch.manual_seed(0)
    x = torch.randn(2, 5, height, width, dtype=torch.float64)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    inputs = [t.requires_grad_() for t in (x, torch.randn(5, 1, kernel, kernel, dtype=torch.float64),
                                           torch.randn(5, dtype=torch.float64))]  # fmt: skip
    padding = dilation * (kernel - 1) // 2
    seed_grad = torch.randn(2, 5, height, width, dtype=torch.float64)
    ours, our_grads = _values_and_gradients(lambda x, w, b: dilated_by_phases(x, w, b, dilation), inputs, seed_grad)
    plain = lambda x, w, b: F.conv2d(x, w, b, padding=padding, dilation=dilation, groups=5)  # noqa: E731
    theirs, their_grads = _values_and_gradients(plain, inputs, seed_grad)
    assert ours.shape == theirs.shape and (ours - theirs).abs().max() < 1e-12
    for mine, reference in zip(our_grads, their_grads, strict=True):
        assert (mine - reference).abs().max() < 1e-12
    if height % dilation == 0 and width % dilation == 0:  # uncropped: the input's layout
        assert ours.is_contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)


@pytest.mark.parametrize("kernel, dilation, on_phases", [(7, 2, True), (3, 3, False), (5, 2, False), (3, 5, True)])
def test_large_dilated_kernels_run_on_phases_on_cpu_only(kernel, dilation, on_phases) -> None:
    """From a padding of 5 on (where oneDNN's AVX2 kernel slows down), eagerly and on CPU; never when traced."""
    torch.manual_seed(0)
    x = torch.randn(1, 4, 12, 12).contiguous(memory_format=torch.channels_last)
    weight = torch.randn(4, 1, kernel, kernel)
    padding = dilation * (kernel - 1) // 2
    with torch.no_grad():
        out = depthwise_conv2d(x, weight, None, padding, dilation)
        assert torch.allclose(out, F.conv2d(x, weight, padding=padding, dilation=dilation, groups=4), atol=1e-5)
    out = depthwise_conv2d(x.requires_grad_(), weight, None, padding, dilation)
    assert ("PermuteBackward0" in _graph_functions(out)) == on_phases
    program = torch.export.export(_Depthwise(weight, padding, dilation), (x.detach(),))
    convolutions = [n for n in program.graph.nodes if n.op == "call_function" and "conv" in str(n.target)]
    assert len(convolutions) == 1 and convolutions[0].args[5] == [dilation, dilation]


class _Depthwise(torch.nn.Module):
    def __init__(self, weight: torch.Tensor, padding: int, dilation: int) -> None:
        super().__init__()
        self.weight, self.padding, self.dilation = torch.nn.Parameter(weight, False), padding, dilation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return depthwise_conv2d(x, self.weight, None, self.padding, self.dilation)


@pytest.mark.parametrize("kernel, dilation", [(5, 1), (3, 2), (5, 2), (7, 2)])
def test_depthwise_gradients_under_bf16_autocast(kernel, dilation) -> None:
    """Cast as autocast casts, and right where PyTorch 2.14.1's bf16 channels-last dilated weight gradient is not."""
    torch.manual_seed(0)
    x = torch.randn(2, 16, 32, 32).contiguous(memory_format=torch.channels_last).requires_grad_()
    weight = torch.randn(16, 1, kernel, kernel, requires_grad=True)
    bias = torch.randn(16, requires_grad=True)
    padding = dilation * (kernel - 1) // 2
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = depthwise_conv2d(x, weight, bias, padding, dilation)
    assert out.dtype == torch.bfloat16 and "_DepthwiseConv2dBackward" in _graph_functions(out)
    seed_grad = torch.randn(out.shape)
    out.float().backward(seed_grad)
    exact_leaves = [t.detach().double().requires_grad_() for t in (x, weight, bias)]
    exact_out = F.conv2d(*exact_leaves, padding=padding, dilation=dilation, groups=16)
    exact_out.backward(seed_grad.double())
    for mine, exact in zip((x, weight, bias), exact_leaves, strict=True):
        assert mine.grad.dtype == torch.float32
        assert (mine.grad.double() - exact.grad).abs().max() < 0.02 * exact.grad.abs().max()


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("channels_last", [True, False])
def test_routed_fusion_folded_into_weights_equals_the_reference(batch, channels_last) -> None:
    """MEFC's step with the routing weights folded into its fusing convolution (per image: a convolution per image
    in NHWC, one batched product in NCHW) against the paper's scaling of each expert's output: values, and the
    gradients of the input, the routing weights and every parameter."""
    torch.manual_seed(0)
    step = ExpertStep(6).double()
    x = torch.randn(batch, 6, 11, 9, dtype=torch.float64)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    routing = torch.randn(batch, 8, dtype=torch.float64).softmax(-1)
    seed_grad = torch.randn(batch, 6, 11, 9, dtype=torch.float64)
    results = []
    for forward in (step.forward_reference, step.forward_fast):
        step.zero_grad()
        leaves = [x.detach().clone().requires_grad_(), routing.detach().clone().requires_grad_()]
        out = forward(*leaves)
        out.backward(seed_grad)
        results.append((out.detach(), [t.grad for t in leaves], [p.grad.clone() for p in step.parameters()]))
    (ref_out, ref_leaves, ref_params), (fast_out, fast_leaves, fast_params) = results
    assert (fast_out - ref_out).abs().max() < 1e-12
    for mine, reference in zip(fast_leaves + fast_params, ref_leaves + ref_params, strict=True):
        assert (mine - reference).abs().max() < 1e-12
