"""Every CUDA path in one prepared run, for a short GPU slot; writes ``OUT_DIR/report.md``. See gpu_check.sh."""

from __future__ import annotations

import argparse
import contextlib
import functools
import gc
import io
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


class Check:
    """Runs commands, keeps each one's log, and gathers the report's rows."""

    def __init__(self, out: Path, device: str, quick: bool) -> None:
        self.out, self.device, self.quick = out, device, quick
        self.began = time.perf_counter()
        self.rows: list[tuple[str, str, str]] = []  # (check, result, figures)
        self.env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
                    "PYTHONUNBUFFERED": "1", "DRSFORMER_CHECK_DEVICE": device}  # fmt: skip

    def run(self, name: str, command: list[str], timeout: int = 600) -> tuple[bool, str]:
        """A subprocess (pytest); its output goes to a log beside the report."""
        start = time.perf_counter()
        try:
            result = subprocess.run(command, cwd=ROOT, env=self.env, capture_output=True, text=True, timeout=timeout)
            output, ok = result.stdout + result.stderr, result.returncode == 0
        except subprocess.TimeoutExpired as err:
            output, ok = f"{_text(err.stdout)}{_text(err.stderr)}\ntimed out after {timeout} s", False
        return self._done(name, " ".join(command), output, ok, start)

    def call(self, name: str, what: str, fn: Callable[[], object]) -> tuple[bool, str]:
        """``fn()`` (a library call, described by ``what``) in this process; its output and any error go to a log,
        and an error fails the check without stopping the run."""
        # PyTorch's first optimizer imports torch._dynamo, which keeps the importing frames (and a benchmark's
        # models and optimizer states in their locals) alive in a reference cycle: collected here, so that no
        # check's memory figures carry an earlier check's leftovers.
        gc.collect()
        start, buffer = time.perf_counter(), io.StringIO()
        with contextlib.redirect_stdout(buffer), contextlib.redirect_stderr(buffer):
            try:
                fn()
                ok = True
            except Exception:  # recorded as a failed check, the run goes on
                buffer.write(traceback.format_exc())
                ok = False
        return self._done(name, what, buffer.getvalue(), ok, start)

    def _done(self, name: str, command: str, output: str, ok: bool, start: float) -> tuple[bool, str]:
        slug = "".join(c if c.isalnum() else "_" for c in name.lower()).strip("_")[:60]
        (self.out / f"{slug}.log").write_text(f"$ {command}\n{output}")
        print(f"{'pass' if ok else 'FAIL'}  {name} ({time.perf_counter() - start:.0f} s)", flush=True)
        return ok, output

    def add(self, name: str, ok: bool, figures: str) -> None:
        """A row of the report, which is written again at once: a run cut off at a time limit keeps its rows."""
        self.rows.append((name, "pass" if ok else "**FAIL**", figures))
        self.write_report()

    def report(self) -> str:
        lines = [f"# GPU self-check ({'quick, ' if self.quick else ''}device {self.device})", "",
                 f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {time.perf_counter() - self.began:.0f} s "
                 f"in all so far, {len(self.rows)} checks", "",
                 *environment(self), "", "| check | result | figures |", "|---|---|---|"]  # fmt: skip
        lines += [f"| {name} | {result} | {figures} |" for name, result, figures in self.rows]
        return "\n".join(lines) + "\n"

    def write_report(self) -> None:
        temporary = self.out / "report.md.partial"
        temporary.write_text(self.report())
        temporary.replace(self.out / "report.md")

    @property
    def passed(self) -> bool:
        return all(result == "pass" for _, result, _ in self.rows)


def environment(check: Check) -> list[str]:
    import torch

    lines = [f"- torch {torch.__version__}, Python {platform.python_version()}, {os.cpu_count()} CPU cores"]
    if check.device.startswith("cuda") and torch.cuda.is_available():
        gpu = torch.device(check.device)
        index = gpu.index if gpu.index is not None else torch.cuda.current_device()
        lines.append(f"- GPU {index}: {torch.cuda.get_device_name(gpu)}, CUDA {torch.version.cuda}, cuDNN "
                     f"{torch.backends.cudnn.version()}")  # fmt: skip
        if shutil.which("nvidia-smi"):
            query = ["nvidia-smi", f"--id={index}", "--query-gpu=name,driver_version,memory.total",
                     "--format=csv,noheader"]  # fmt: skip
            smi = subprocess.run(query, capture_output=True, text=True)
            lines.append(f"- nvidia-smi: {smi.stdout.strip()}")
    else:
        lines.append(f"- device: {check.device} ({platform.processor() or platform.machine()})")
    return lines


def _text(output: str | bytes | None) -> str:
    """A timed-out subprocess's partial output (bytes even in text mode, or None), as text."""
    return output.decode(errors="replace") if isinstance(output, bytes) else output or ""


def bench(check: Check, mode: str, label: str, options: dict[str, object]) -> None:
    """:func:`drsformer.timing.run_paths` (what ``drsformer bench`` runs) with ``options`` (``compare``, and any
    :class:`~drsformer.timing.BenchSettings` field); its JSON beside the report."""
    from drsformer.archs import DRSformer
    from drsformer.timing import BenchSettings, format_table, run_paths, to_json

    options = dict(options)
    paths = ["reference", "fast"] if options.pop("compare", False) else ["fast"]
    shape: dict[str, int]
    if check.quick:
        shape = dict(height=32, width=32, batch=2, warmup=1, repeat=1)
    else:
        side, batch = (256, 1) if mode == "infer" else (128, 8)
        shape = dict(height=side, width=side, batch=batch, warmup=3, repeat=10)
    settings = BenchSettings(mode=mode, device=check.device, **shape, **options)  # type: ignore[arg-type]
    path = check.out / f"bench_{mode}_{label.replace(' ', '_').replace('+', 'and')}.json"

    def measure() -> None:
        torch_seed(settings.seed)
        model = DRSformer(dim=8, num_blocks=[1, 1, 1, 1]) if check.quick else DRSformer()
        results, difference = run_paths(model, settings, paths)
        print(format_table(settings, results, difference))
        path.write_text(to_json(settings, results, difference, model.config))

    ok, _ = check.call(f"bench {mode} {label}", f"timing.run_paths({settings}, {paths})", measure)
    figures = ""
    if ok:
        report = json.loads(path.read_text())
        parts = [f"{r['path']} {r['median_ms']:.1f} ms ({r['images_per_s']:.1f} img/s, {r['peak_memory_mb']:.0f} MB)"
                 for r in report["results"]]  # fmt: skip
        if report.get("max_output_difference") is not None:
            parts.append(f"max diff {report['max_output_difference']:.2g}")
        figures = "; ".join(parts)
    batch_label = f" x{settings.batch}" if mode == "train" or check.quick else ""
    check.add(f"bench {mode} {settings.height}²{batch_label}: {label}", ok, figures)


def torch_seed(seed: int) -> None:
    import torch

    torch.manual_seed(seed)


def tiled_photo(check: Check) -> None:
    """The full model on a 4K photo (3840 x 2160) through exact tiles of 512 with the full-size maps in host
    memory, of 512 with the maps on the device, and of 768 on the device (each: time, peak GPU memory allocated
    and reserved; host maps: pinned memory). The three must agree (all without TF32). The two runs at 512 tell
    the host maps' cost from the tile's. Quick: the width-8 model on 480 x 272, tiles of 128 and 192."""
    import torch

    from drsformer import tiling
    from drsformer.archs import DRSformer

    height, width = (272, 480) if check.quick else (2160, 3840)
    model_name = "width-8 model" if check.quick else "full model"
    small, large = (128, 192) if check.quick else (512, 768)
    runs_wanted = [(small, "host"), (small, "device"), (large, "device")]
    name = (f"exact tiles of {small} (maps in host memory, then on the device) and {large}, {model_name}, "
            f"{width}x{height}")  # fmt: skip

    start = time.perf_counter()
    cuda = check.device.startswith("cuda")
    try:
        torch.manual_seed(0)
        model = (DRSformer(dim=8, num_blocks=[1, 1, 1, 1]) if check.quick else DRSformer()).eval().to(check.device)
        image = torch.rand(1, 3, height, width)
        device = torch.device(check.device)
        saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
        outputs, parts = [], []
        try:
            for tile, storage in runs_wanted:
                held = 0.0
                if cuda:
                    gc.collect()  # what earlier checks left in reference cycles (see Check.call)
                    torch.cuda.empty_cache()
                    torch.cuda.reset_peak_memory_stats(device)
                    held = torch.cuda.memory_allocated(device) / 2**30
                tiler = tiling.ExactTiler(model, tile, contextlib.nullcontext, storage=storage)
                began = time.perf_counter()
                with torch.inference_mode():
                    outputs.append(tiler(image).cpu())
                if cuda:
                    torch.cuda.synchronize(device)
                part = f"tiles of {tile}, {storage} maps: {time.perf_counter() - began:.1f} s"
                if cuda:
                    allocated = torch.cuda.max_memory_allocated(device) / 2**30
                    reserved = torch.cuda.max_memory_reserved(device) / 2**30
                    part += (f", GPU peak {allocated:.2f} GiB allocated ({held:.2f} GiB held before), {reserved:.2f} "
                             f"GiB reserved")  # fmt: skip
                if storage == "host":
                    part += f", pinned {tiler.host_maps.peak_bytes / 2**30:.2f} GiB"
                parts.append(part)
        finally:
            torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved
        difference = max((other - outputs[0]).abs().max().item() for other in outputs[1:])
        maps = tiling.storage_bytes_per_pixel(model) * height * width / 2**30
        ok = bool(torch.isfinite(outputs[0]).all()) and difference < 1e-3
        figures = "; ".join(parts) + f"; maps {maps:.2f} GiB; max difference {difference:.2g}"
    except Exception as err:  # a failed check, recorded; the run goes on
        ok, figures = False, f"{type(err).__name__}: {str(err).splitlines()[0][:200]}"
    print(f"{'pass' if ok else 'FAIL'}  exact tiles {width}x{height} ({time.perf_counter() - start:.0f} s)", flush=True)
    check.add(name, ok, figures)


def msfn_step(module, x, mode: str, split: bool):  # noqa: ANN001, ANN201 (torch is imported where it runs)
    """One forward (or forward + backward) of ``module`` with ``pair_split = split``: its output (and the input's
    gradient), flattened."""
    import torch

    module.pair_split = split
    if mode == "forward":
        with torch.inference_mode():
            return module(x.detach()).flatten()
    x.grad = None
    out = module(x)
    out.square().mean().backward()
    return torch.cat([out.detach().flatten(), x.grad.flatten()])


def msfn_formulations(check: Check) -> None:
    """One MSFN of the full model's first level (dim 48, hidden 127) and of its second (96, 255), in the two
    formulations of its pair-grouped convolutions (``pair_split``: False, the grouped convolutions CUDA runs by default;
    True, depth-wise ones on contiguous segments, the CPU default since issue 29): forward, and forward + backward, on a
    training batch (8 x 128^2 and 8 x 64^2), alternating, median of 20 after 5 warm-ups. The outputs and input gradients
    must agree. Quick: 2 x 32^2, 3 timed."""
    import torch

    from drsformer.archs.blocks import MixedScaleFeedForward

    device = torch.device(check.device)
    cuda = device.type == "cuda"
    warmup, repeat = (1, 3) if check.quick else (5, 20)
    rows, worst = [], 0.0

    def timed(fn: Callable[[], torch.Tensor]) -> float:
        if cuda:
            torch.cuda.synchronize(device)
        began = time.perf_counter()
        fn()
        if cuda:
            torch.cuda.synchronize(device)
        return (time.perf_counter() - began) * 1000

    def measure() -> None:
        nonlocal worst
        for dim, side in ((48, 128), (96, 64)):
            torch.manual_seed(0)
            module = MixedScaleFeedForward(dim, 2.66, bias=False).to(device)
            batch, side = (2, 32) if check.quick else (8, side)
            x = torch.randn(batch, dim, side, side, device=device, requires_grad=True)
            results = {}
            for mode in ("forward", "forward + backward"):
                run = functools.partial(msfn_step, module, x, mode)
                for _ in range(warmup):
                    run(False), run(True)
                times: dict[bool, list[float]] = {False: [], True: []}
                for i in range(repeat):
                    for split in (False, True) if i % 2 == 0 else (True, False):
                        times[split].append(timed(functools.partial(run, split)))
                worst = max(worst, (run(False) - run(True)).abs().max().item())
                results[mode] = [statistics.median(times[split]) for split in (False, True)]
            rows.append(f"dim {dim}, {batch}x{side}²: " + "; ".join(
                f"{mode} {grouped:.2f} → {split:.2f} ms ({grouped / split:.2f}×)"
                for mode, (grouped, split) in results.items()))  # fmt: skip
            print(rows[-1])

    ok, _ = check.call("MSFN formulations", "msfn_formulations (pair_split False against True)", measure)
    ok = ok and worst < 1e-3
    check.add("MSFN pair-grouped convolutions: grouped (CUDA default) → two depth-wise (pair_split)", ok,
              " \\| ".join(rows) + f"; max difference {worst:.2g}" if rows else "")  # fmt: skip


MSFN_POLICIES = {  # which MSFNs run pair_split (the two depth-wise form): by module name
    "grouped everywhere (CUDA default)": lambda name: False,
    "two depth-wise everywhere": lambda name: True,
    "two depth-wise at full resolution only": lambda name: name.startswith(("encoder_level1", "decoder_level1",
                                                                            "refinement")),
}  # fmt: skip


def msfn_in_the_model(check: Check) -> None:
    """The full model's fp32 inference (1 x 256^2) and training step (forward + backward, 8 x 128^2) with each
    of :data:`MSFN_POLICIES`, alternating, median of 10 after 3 warm-ups: whether the one-MSFN gains carry to the
    whole model, and at which levels. Outputs and gradients must agree (compared without TF32). Quick: the
    width-8 model, 2 x 32^2."""
    import torch

    from drsformer.archs import DRSformer
    from drsformer.archs.blocks import MixedScaleFeedForward

    device = torch.device(check.device)
    warmup, repeat = (1, 2) if check.quick else (3, 10)
    rows, worst = [], 0.0

    def measure() -> None:
        nonlocal worst
        torch.manual_seed(0)
        model = (DRSformer(dim=8, num_blocks=[1, 1, 1, 1]) if check.quick else DRSformer()).to(device)
        msfns = [(n, m) for n, m in model.named_modules() if isinstance(m, MixedScaleFeedForward)]
        small = (2, 32) if check.quick else None
        shapes = {"inference": small or (1, 256), "training step": small or (8, 128)}

        def step(mode: str, x: torch.Tensor) -> torch.Tensor:
            if mode == "inference":
                with torch.inference_mode():
                    return model(x).flatten()
            model.zero_grad(set_to_none=True)
            model(x).square().mean().backward()
            return torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])

        def use(policy: str) -> None:
            for name, module in msfns:
                module.pair_split = MSFN_POLICIES[policy](name)

        def run(policy: str, mode: str, x: torch.Tensor) -> float:
            use(policy)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            began = time.perf_counter()
            step(mode, x)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            return (time.perf_counter() - began) * 1000

        for mode, (batch, side) in shapes.items():
            x = torch.rand(batch, 3, side, side, device=device)
            policies = list(MSFN_POLICIES)
            for _ in range(warmup):
                for policy in policies:
                    run(policy, mode, x)
            times: dict[str, list[float]] = {policy: [] for policy in policies}
            for i in range(repeat):
                for policy in policies if i % 2 == 0 else policies[::-1]:
                    times[policy].append(run(policy, mode, x))
            results, saved = [], torch.backends.cudnn.allow_tf32
            torch.backends.cudnn.allow_tf32 = False  # compared in full float32; timed with PyTorch's defaults
            try:
                for policy in policies:
                    use(policy)
                    results.append(step(mode, x))
            finally:
                torch.backends.cudnn.allow_tf32 = saved
            scale = results[0].abs().max().item()
            worst = max(worst, *((r - results[0]).abs().max().item() / scale for r in results[1:]))
            first = statistics.median(times[policies[0]])
            rows.append(f"{mode} {batch}x{side}²: " + "; ".join(
                f"{policy} {statistics.median(times[policy]):.1f} ms ({first / statistics.median(times[policy]):.2f}×)"
                for policy in policies))  # fmt: skip
            print(rows[-1])
        for _, module in msfns:
            module.pair_split = None

    ok, _ = check.call("MSFN in the model", "msfn_in_the_model (MSFN_POLICIES)", measure)
    ok = ok and worst < 1e-3
    check.add("MSFN formulations in the whole model, fp32", ok,
              " \\| ".join(rows) + f"; max relative difference {worst:.2g}" if rows else "")  # fmt: skip


def train(check: Check, label: str, sets: list[str]) -> tuple[bool, dict]:
    """drsformer train on the demo's synthetic pairs; returns its figures from log.jsonl."""
    data = check.out / "data"
    if not (data / "train").is_dir():
        from drsformer.demo.data import make_data

        make_data(data, 0, 64 if check.quick else 160)
    iterations = 4 if check.quick else 50
    run_dir = check.out / f"run_{label.replace(' ', '_')}"
    shutil.rmtree(run_dir, ignore_errors=True)
    net = ["network_g.dim=8", "network_g.num_blocks=[1,1,1,1]"] if check.quick else []
    crop, batch = (32, 2) if check.quick else (128, 8)
    overrides = [
        f"datasets.train.dataroot_lq={data}/train/input", f"datasets.train.dataroot_gt={data}/train/target",
        f"datasets.val.dataroot_lq={data}/test/input", f"datasets.val.dataroot_gt={data}/test/target",
        "datasets.train.mini_batch_sizes=null", "datasets.train.iters=null", "datasets.train.gt_sizes=null",
        f"datasets.train.gt_size={crop}", f"datasets.train.batch_size_per_gpu={batch}",
        "train.effective_batch_size=null", f"train.total_iter={iterations}", f"val.val_freq={iterations}",
        f"logger.print_freq={max(iterations // 5, 1)}", f"path.experiments_root={run_dir}", "name=gpu_check",
        *net, *sets,
    ]  # fmt: skip
    options_file = ROOT / "options/train/Rain200H.yml"

    def run_training() -> None:
        from drsformer.config import read_training_options
        from drsformer.engine.trainer import train as train_run

        train_run(read_training_options(options_file, overrides).options, device=check.device, progress=False)

    ok, _ = check.call(f"train {label}", f"train {options_file} --set {' '.join(overrides)}", run_training)
    figures: dict = {}
    if ok:
        records = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
        windows = [r for r in records if r["kind"] == "train"][1:] or [r for r in records if r["kind"] == "train"]
        figures = {
            "images_per_s": statistics.median(r["images_per_s"] for r in windows),
            "seconds_per_iter": statistics.median(r["seconds_per_iter"] for r in windows),
            "peak_memory_mb": max((r["peak_memory_mb"] for r in windows if "peak_memory_mb" in r), default=None),
        }
    return ok, figures


def main() -> int:
    parser = argparse.ArgumentParser(description="every CUDA path in one run; writes OUT_DIR/report.md")
    parser.add_argument("out", nargs="?", default="gpu_check", help="folder for report.md and the logs")
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu")
    parser.add_argument("--quick", action="store_true", help="tiny model, few iterations")
    parser.add_argument("--compile", action="store_true", help="also bf16 + torch.compile (inference and training; "
                        "compilation takes minutes)")  # fmt: skip
    parser.add_argument("--tests", metavar="EXPR", help="only the CUDA tests pytest -k EXPR selects (default: all)")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))  # this checkout's drsformer, installed or not
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    check = Check(out, args.device, args.quick)

    select = ["-k", args.tests] if args.tests else []
    ok, output = check.run("pytest -m cuda", [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                                              "-m", "cuda", "--durations=8", *select, "tests/test_gpu.py"])  # fmt: skip
    summary = next((line for line in reversed(output.splitlines()) if "passed" in line or "failed" in line), "")
    check.add("CUDA tests (tests/test_gpu.py: NaN rollback fp16/bf16, exact tiling vs CPU and at every level "
              "boundary with slowed copies, one storage for a self-ensemble, pinned host maps, bench on its GPU, "
              f"--tile auto, deterministic resume, process group){f'; only -k {args.tests}' if args.tests else ''}",
              ok and "skipped" not in summary,
              summary.strip("= "))  # fmt: skip

    compiled: dict[str, object] = {"precision": "bf16", "compile": True}
    infer_runs: list[tuple[str, dict[str, object]]] = [
        ("fp32", {"compare": True}),
        ("bf16", {"precision": "bf16", "compare": True}),
    ]
    train_runs: list[tuple[str, dict[str, object]]] = [
        ("fp32", {"compare": True}),
        ("bf16", {"precision": "bf16", "compare": True}),
        ("channels-last", {"channels_last": True, "compare": True}),
        ("activation checkpointing", {"activation_checkpointing": True, "compare": True}),
    ]
    for label, options in infer_runs:
        bench(check, "infer", label, options)
    for label, options in train_runs:
        bench(check, "train", label, options)

    msfn_formulations(check)
    msfn_in_the_model(check)
    tiled_photo(check)
    ok_fast, fast = train(check, "bf16", ["train.precision=bf16"])
    model = "the demo's width-8 model" if args.quick else "the full model (with MEFC)"
    peak = fast.get("peak_memory_mb")
    check.add(f"drsformer train, {model}, bf16, synthetic pairs", ok_fast,
              f"{fast['images_per_s']:.1f} images/s, peak " + (f"{peak:.0f} MB" if peak else "- (CUDA only)")
              if ok_fast else "")  # fmt: skip
    ok_det, det = train(check, "bf16 deterministic", ["train.precision=bf16", "train.deterministic=true"])
    cost = (det["seconds_per_iter"] / fast["seconds_per_iter"] - 1) * 100 if ok_det and ok_fast else None
    check.add(
        "train.deterministic: true, same run",
        ok_det,
        f"{det.get('seconds_per_iter', 0) * 1000:.0f} ms/iter, {cost:+.0f}% time" if cost is not None else "",
    )

    if args.compile:  # compilation takes minutes: last, so a run cut off at a time limit keeps every other row
        bench(check, "infer", "bf16 + compile", compiled)
        bench(check, "train", "bf16 + compile", compiled)

    print(check.report())
    return 0 if check.passed else 1


if __name__ == "__main__":
    sys.exit(main())
