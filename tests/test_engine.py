"""The training engine's parts one by one: the guard's policy, the optimizer step (fp16 scaler, EMA, the flags it
leaves on the device), the precision of the attention sums and the layer norm under autocast, and validation
with every protocol."""

from __future__ import annotations

import warnings
from contextlib import contextmanager

import numpy as np
import pytest
import torch
from conftest import TINY

from drsformer.archs import DRSformer
from drsformer.archs.attention import attention_sums, scores_from_sums
from drsformer.archs.blocks import LayerNorm, TransformerBlock
from drsformer.engine.guard import Guard
from drsformer.engine.step import EMA, LOSS_SCALE_FLOOR, StepOptions, Stepper
from drsformer.metrics import evaluate_pair, torch_metrics
from drsformer.precision import autocast

# ---------------------------------------------------------------- the guard's policy


def test_a_good_step_closes_the_streak_and_bad_steps_count_in_a_row() -> None:
    guard = Guard(max_bad_steps=3, max_skipped_steps=10, fp16=False)
    assert guard.observe(1, False, False).step and not guard.streak_open
    first = guard.observe(2, True, False)
    assert not first.step and first.bad and not first.rollback and guard.streak_start == 2
    assert guard.observe(3, False, True).bad  # a non-finite gradient is bad outside fp16
    assert guard.observe(4, False, False).step and not guard.streak_open  # closed: the count starts again
    guard.observe(5, True, False)
    guard.observe(6, True, False)
    last = guard.observe(7, True, False)
    assert last.rollback and last.reason == "3 bad steps" and guard.rollback_target() == 4


def test_fp16_overflows_are_skips_until_a_run_of_them_rolls_back() -> None:
    guard = Guard(max_bad_steps=2, max_skipped_steps=3, fp16=True)
    verdicts = [guard.observe(i, False, True) for i in (10, 11, 12)]
    assert [v.skipped for v in verdicts] == [True] * 3 and not any(v.bad for v in verdicts)
    assert [v.rollback for v in verdicts] == [False, False, True]
    assert "skipped by the fp16 gradient scaler" in verdicts[-1].reason and guard.rollback_target() == 9
    guard.close()
    low = guard.observe(20, False, False, scale_low=True)  # a collapsed scale alone is enough
    assert low.rollback and "floor" in low.reason and guard.rollback_target() == 19
    guard.close()
    assert guard.observe(30, True, True).bad  # a non-finite loss is bad in fp16 too


# ---------------------------------------------------------------- one optimizer step


def _stepper(
    precision: str, ema_decay: float = 0.0, clip_norm: float | None = None, attention: str = "topk"
) -> Stepper:
    torch.manual_seed(0)
    model = DRSformer(**TINY, mefc=False, attention=attention)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    options = StepOptions(precision, clip_norm, torch.contiguous_format, {"mixup": False}, seed=0, rank=0)
    ema = EMA(model, ema_decay) if ema_decay else None
    return Stepper(model, model, optimizer, torch.nn.L1Loss(), options, torch.device("cpu"), ema)


def _batches(scale: float = 1.0):
    generator = torch.Generator().manual_seed(1)
    while True:
        gt = torch.rand(2, 3, 16, 16, generator=generator)
        yield {"lq": gt + 0.1 * scale, "gt": gt}


class Scaled(torch.nn.Module):
    """L1 times ``factor``: a finite loss whose fp16 gradients overflow."""

    def __init__(self, factor: float) -> None:
        super().__init__()
        self.factor = factor

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return (a - b).abs().mean() * self.factor


def _params(module: torch.nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in module.parameters()]


def test_an_fp16_overflow_skips_the_step_and_leaves_ema_alone() -> None:
    stepper = _stepper("fp16", ema_decay=0.5)
    guard = Guard(5, 20, fp16=True)
    # A good step first, so that the average and the weights differ.
    acc = stepper.accumulate(_batches(), accum=1, micro_start=0)
    stepper.finish(guard.observe(1, bool(acc.loss_bad), bool(acc.grad_bad)).step)
    before, ema_before = _params(stepper.model), _params(stepper.ema.module)
    assert not all(torch.equal(a, b) for a, b in zip(before, ema_before, strict=True))
    stepper.loss_fn = Scaled(1e8)
    acc = stepper.accumulate(_batches(), accum=1, micro_start=1)
    assert not acc.loss_bad.item() and acc.grad_bad.item()  # a finite loss, gradients past fp16's range
    verdict = guard.observe(2, bool(acc.loss_bad), bool(acc.grad_bad))
    assert verdict.skipped and not verdict.step
    scale = stepper.scale()
    stepper.finish(verdict.step)
    assert stepper.scale() == scale / 2  # the scaler backed off
    assert all(torch.equal(a, b) for a, b in zip(before, _params(stepper.model), strict=True))
    assert all(torch.equal(a, b) for a, b in zip(ema_before, _params(stepper.ema.module), strict=True))


def test_the_loss_scale_floor_is_flagged_on_the_device() -> None:
    stepper = _stepper("fp16")
    stepper.loss_fn = Scaled(1e8)
    flags = []
    for i in range(18):  # 2**16 halved 17 times is below 1
        acc = stepper.accumulate(_batches(), accum=1, micro_start=i)
        assert acc.scale_low.device.type == "cpu" and acc.scale_low.dtype == torch.bool
        flags.append(bool(acc.scale_low))
        stepper.finish(False)
    assert flags.index(True) == 17 and stepper.scale() < LOSS_SCALE_FLOOR
    stepper.reset_scaler()
    assert stepper.scale() == 2.0**16


def test_accumulated_micro_batches_average_their_gradients() -> None:
    # Dense attention: top-k selection is discontinuous, so a near-tie that rounds one way in a batch of two and
    # the other way in a batch of one moves a gradient by far more than rounding (1 % seen), whatever the step does.
    one, two = _stepper("fp32", attention="dense"), _stepper("fp32", attention="dense")
    batch = next(_batches())
    halves = iter([{k: v[:1] for k, v in batch.items()}, {k: v[1:] for k, v in batch.items()}])
    a = one.accumulate(iter([batch]), accum=1, micro_start=0)
    b = two.accumulate(halves, accum=2, micro_start=0)
    assert torch.allclose(a.loss, b.loss, atol=1e-7) and torch.allclose(a.grad_norm, b.grad_norm, rtol=1e-5)
    for p, q in zip(one.model.parameters(), two.model.parameters(), strict=True):
        assert torch.allclose(p.grad, q.grad, atol=1e-6)


@pytest.mark.parametrize("clip_norm", [None, 1e-3])
def test_gradients_are_rescaled_only_when_clipping_is_on(clip_norm: float | None) -> None:
    """Without train.grad_clip_norm the step computes the gradients' norm and never rescales them; with it, they
    are scaled to the norm. The norm is the same either way."""
    from torch.utils._python_dispatch import TorchDispatchMode

    written: set[int] = set()  # addresses that in-place multiplications wrote

    class Writes(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            name = str(func.overloadpacket.__name__)
            if "mul_" in name and args:
                targets = args[0] if isinstance(args[0], (list, tuple)) else [args[0]]
                written.update(t.data_ptr() for t in targets if isinstance(t, torch.Tensor))
            return func(*args, **(kwargs or {}))

    stepper = _stepper("fp32", clip_norm=clip_norm)
    plain = _stepper("fp32")
    expected = plain.accumulate(_batches(), accum=1, micro_start=0)
    with Writes():
        acc = stepper.accumulate(_batches(), accum=1, micro_start=0)
    grads = [p.grad for p in stepper.model.parameters()]
    touched = {g.data_ptr() for g in grads} & written
    assert torch.allclose(acc.grad_norm, expected.grad_norm, rtol=1e-6) and acc.grad_norm > 10 * (clip_norm or 0)
    if clip_norm is None:
        assert not touched
        assert all(torch.equal(g, p.grad) for g, p in zip(grads, plain.model.parameters(), strict=True))
    else:
        assert touched == {g.data_ptr() for g in grads}
        total = torch.linalg.vector_norm(torch.stack([g.norm() for g in grads]))
        assert total == pytest.approx(clip_norm, rel=1e-3)


# ---------------------------------------------------------------- precision of the global sums and the norm


@contextmanager
def recorded_dtypes(names: tuple[str, ...]):
    """The input dtypes of the aten ops whose name contains one of ``names``, as they run."""
    from torch.utils._python_dispatch import TorchDispatchMode

    seen: list[tuple[str, torch.dtype]] = []

    class Record(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            name = str(func)
            if any(n in name for n in names):
                first = next((a for a in args if isinstance(a, torch.Tensor)), None)
                if first is not None:
                    seen.append((name, first.dtype))
            return func(*args, **(kwargs or {}))

    with Record():
        yield seen


@pytest.mark.parametrize(
    "precision, probe", [("bf16", "_is_mkldnn_bf16_supported"), ("fp16", "_is_mkldnn_fp16_supported")]
)
@pytest.mark.parametrize("native", [True, False])
def test_reduced_precision_on_a_cpu_without_its_arithmetic_warns(precision, probe, native, monkeypatch) -> None:
    """Without native instructions oneDNN emulates bf16/fp16, 14-70x slower than fp32: the user is told, once
    per call site, and the run goes on. Where the CPU has them, or for fp32 and CUDA, nothing is said."""
    monkeypatch.setattr(torch.ops.mkldnn, probe, lambda: native)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with autocast("cpu", precision):
            assert torch.get_autocast_dtype("cpu") == (torch.bfloat16 if precision == "bf16" else torch.float16)
        autocast("cpu", "fp32")
        autocast("cuda", precision)
    messages = [str(w.message) for w in caught if str(w.message).startswith("precision ")]  # not torch's own
    if native:
        assert messages == []
    else:
        assert len(messages) == 1 and messages[0].startswith(f"precision {precision}: this CPU has no {precision} ")
        assert "use fp32 here" in messages[0]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_attention_scores_are_formed_in_float32_under_autocast(dtype: torch.dtype) -> None:
    q, k = (torch.randn(1, 2, 8, 300) for _ in range(2))
    temperature = torch.full((2, 1, 1), 1.3)
    exact = scores_from_sums(attention_sums(q, k), temperature)
    with autocast("cpu", "bf16" if dtype == torch.bfloat16 else "fp16"), recorded_dtypes(("bmm", "matmul")) as seen:
        sums = attention_sums(q.to(dtype), k.to(dtype))
        scores = scores_from_sums(sums, temperature)
    assert seen and all(d == torch.float32 for _, d in seen), seen
    assert sums.gram.dtype == scores.dtype == torch.float32
    # Same inputs (rounded to the low precision), float32 arithmetic: equal to a float32 computation on them.
    reference = scores_from_sums(attention_sums(q.to(dtype).float(), k.to(dtype).float()), temperature)
    assert torch.equal(scores, reference)
    assert (scores - exact).abs().max() < 0.05  # only the inputs' rounding remains


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_layer_norm_of_large_activations_is_finite_under_autocast(precision: str, channels_last: bool) -> None:
    norm = LayerNorm(16, "WithBias")
    x = torch.randn(2, 16, 12, 12) * 400  # a channel variance far above fp16's largest number
    low = x.half() if precision == "fp16" else x.bfloat16()
    if channels_last:
        low = low.contiguous(memory_format=torch.channels_last)
    with autocast("cpu", precision), recorded_dtypes(("var_mean", "native_layer_norm")) as seen:
        out = norm(low)
    assert out.dtype == low.dtype and torch.isfinite(out).all()
    # bf16 NHWC goes to PyTorch's kernel in bf16, which computes in float32; every other case converts first.
    low_precision_kernel = precision == "bf16" and channels_last
    assert seen and all(d == (low.dtype if low_precision_kernel else torch.float32) for _, d in seen), seen
    expected = norm(low.float())
    assert (out.float() - expected).abs().max() < 0.05 * expected.abs().max()
    # Float32 arithmetic on the rounded input: the float32 result rounded, within one rounding step.
    assert ((out.float() - expected).abs() <= expected.abs() * 2**-8 + 1e-6).all()


def test_bf16_layer_norm_on_nhwc_equals_the_float32_norm_rounded_with_its_gradients() -> None:
    torch.manual_seed(0)
    norm = LayerNorm(24, "WithBias")
    with torch.no_grad():
        norm.body.weight.uniform_(0.5, 1.5)
        norm.body.bias.uniform_(-0.5, 0.5)
    x = (torch.randn(2, 24, 10, 12) * 3 + 1).bfloat16().contiguous(memory_format=torch.channels_last)
    x32 = x.float().requires_grad_()
    x16 = x.clone().requires_grad_()
    out = norm(x16)
    expected = norm.body.forward_reference(x32)
    assert out.dtype == torch.bfloat16 and out.is_contiguous(memory_format=torch.channels_last)
    assert ((out.float() - expected).abs() <= expected.abs() * 2**-8 + 1e-6).all()
    grad = torch.randn_like(expected)
    (weight16, bias16, input16) = torch.autograd.grad(out, (norm.body.weight, norm.body.bias, x16), grad.bfloat16())
    (weight32, bias32, input32) = torch.autograd.grad(expected, (norm.body.weight, norm.body.bias, x32), grad)
    for low, high in ((weight16, weight32), (bias16, bias32), (input16, input32)):
        assert (low.float() - high).abs().max() <= 0.02 * high.abs().max()


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_a_block_on_large_activations_stays_finite_under_autocast(precision: str) -> None:
    torch.manual_seed(0)
    block = TransformerBlock(16, 2, 2.66, False, "WithBias", "fast")
    x = torch.randn(1, 16, 16, 16) * 400
    with autocast("cpu", precision):
        out = block(x)
        out.float().sum().backward()
    assert torch.isfinite(out).all() and all(torch.isfinite(p.grad).all() for p in block.parameters())


# ---------------------------------------------------------------- validation metrics


@pytest.mark.parametrize("protocol", ["restormer", "rcdnet", "skimage"])
def test_validation_metrics_equal_the_evaluation_numbers_for_every_protocol(protocol: str) -> None:
    rng = np.random.default_rng(4)
    gt = rng.integers(0, 256, (2, 40, 52, 3), dtype=np.uint8)
    restored = np.clip(gt.astype(int) + rng.integers(-20, 21, gt.shape), 0, 255).astype(np.uint8)
    to_tensor = lambda a: torch.from_numpy(a).permute(0, 3, 1, 2).double() / 255  # noqa: E731
    psnr = torch_metrics.psnr(to_tensor(restored), to_tensor(gt), protocol)
    ssim = torch_metrics.ssim(to_tensor(restored), to_tensor(gt), protocol)
    for i in range(2):
        score = evaluate_pair(restored[i], gt[i], protocol)
        assert psnr[i].item() == pytest.approx(score.psnr, abs=1e-6)
        assert ssim[i].item() == pytest.approx(score.ssim, abs=1e-6)


# ---------------------------------------------------------------- logging window and backends


def test_the_log_window_averages_applied_steps_over_processes() -> None:
    from drsformer.engine.logger import LogWindow

    window = LogWindow(torch.device("cpu"))
    window.add(torch.tensor(0.5), True, images=4, wait=0.01)
    window.add(torch.tensor(float("nan")), False, images=4, wait=0.03)  # a dropped step: not in the mean
    window.add(torch.tensor(0.25), True, images=4, wait=0.02)

    def two_processes(stats: torch.Tensor) -> torch.Tensor:  # as if a second process had the same window
        return stats.mul_(2)

    values = window.values(world_size=2, all_reduce_sum=two_processes)
    assert values["loss"] == pytest.approx(0.375) and values["data_wait_s"] == pytest.approx(0.02)
    assert values["images_per_s"] > 0 and window.steps == window.good == 0  # a fresh window


def test_backends_follow_the_tf32_and_deterministic_keys_and_are_put_back() -> None:
    from drsformer.engine.build import configure_backends as _configure_backends
    from drsformer.engine.build import restore_backends as _restore_backends

    before = (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.benchmark)
    before += (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    saved = _configure_backends(torch.device("cuda"), {"tf32": False, "deterministic": False})
    assert torch.backends.cudnn.benchmark and not torch.backends.cuda.matmul.allow_tf32
    assert not torch.backends.cudnn.allow_tf32
    _restore_backends(saved)
    saved = _configure_backends(torch.device("cuda"), {"tf32": True, "deterministic": True})
    assert torch.are_deterministic_algorithms_enabled() and torch.backends.cudnn.deterministic
    assert not torch.backends.cudnn.benchmark and torch.backends.cuda.matmul.allow_tf32
    _restore_backends(saved)
    after = (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.benchmark)
    after += (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    assert after == before
