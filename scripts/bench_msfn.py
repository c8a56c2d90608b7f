"""The MSFN's fast path against the formulation it replaced, in one process, alternating: eager inference, an
eager training step, and ONNX Runtime on graphs exported from each. Prints one table.

    python scripts/bench_msfn.py --sizes 128 256 --repeat 3
    python scripts/bench_msfn.py --sizes 256 --modes onnx

"previous" is the fast path before issue 29 (``MixedScaleFeedForward.pair_split = False``, what CUDA and pt2 files
run): the pair-grouped convolutions (``dwconv3x3_1``, ``dwconv5x5_1``, two input channels per group) run as grouped
convolutions on ``cat([a, b])``. "current" (``pair_split = True``, the CPU default) computes them as depth-wise ones on
contiguous segments of the first stage, without concatenations. Everything else in the model is the same code, except
for ONNX Runtime: there "previous" is the grouped export and "current" what ONNX files get now, the blocked MSFN
(``drsformer.deploy.blocked_msfn``) and each layer norm as one LayerNormalization node. The model
is the paper's (with MEFC), random weights (seed 0). Each figure is the median of ``--repeat`` timed iterations after
one warm-up, the two formulations alternating so that a drift in the machine's speed falls on both. "max diff" is the
largest difference between the two outputs of the last iteration."""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch
from torch import Tensor

from drsformer.archs import DRSformer
from drsformer.archs.blocks import MixedScaleFeedForward
from drsformer.archs.variants import VARIANTS

FORMULATIONS = {"previous": False, "current": True}  # MixedScaleFeedForward.pair_split


def use(model: torch.nn.Module, name: str) -> None:
    for module in model.modules():
        if isinstance(module, MixedScaleFeedForward):
            module.pair_split = FORMULATIONS[name]


def alternate(runs: dict[str, Callable[[], Tensor]], repeat: int) -> tuple[dict[str, float], float]:
    outputs = {}
    for name, run in runs.items():  # warm-up
        outputs[name] = run()
    times: dict[str, list[float]] = {name: [] for name in runs}
    names = list(runs)
    for i in range(repeat):
        for name in names if i % 2 == 0 else names[::-1]:
            start = time.perf_counter()
            outputs[name] = runs[name]()
            times[name].append(time.perf_counter() - start)
    difference = (outputs["previous"].float() - outputs["current"].float()).abs().max().item()
    return {name: statistics.median(t) for name, t in times.items()}, difference


def eager(model: torch.nn.Module, image: Tensor, name: str, train: bool) -> Callable[[], Tensor]:
    def run() -> Tensor:
        use(model, name)
        if not train:
            with torch.inference_mode():
                return model(image)
        model.zero_grad(set_to_none=True)
        out = model(image)
        (out - image).abs().mean().backward()
        return out.detach()

    return run


def onnx_sessions(model: DRSformer, folder: Path) -> dict[str, Callable[[Tensor], Tensor]]:
    """ONNX Runtime sessions of the model exported with each formulation (any height and width)."""
    from drsformer.deploy import graph
    from drsformer.deploy.runtime import OnnxModel

    sessions: dict[str, Callable[[Tensor], Tensor]] = {}
    for name in FORMULATIONS:
        exported = graph.ExportedDRSformer(model, for_onnxruntime=name == "current")
        path = folder / f"{name}.onnx"
        graph.export_onnx(exported, graph.example_input(64, 64), True, path)
        sessions[name] = OnnxModel(path)
    return sessions


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[128, 256])
    parser.add_argument("--modes", nargs="+", default=["infer", "train", "onnx"], choices=("infer", "train", "onnx"))
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    model = VARIANTS["drsformer"]()
    print(f"{torch.get_num_threads()} threads, torch {torch.__version__}\n")
    print("| size | mode | previous | current | speed-up | max diff |")
    print("|---:|---|---:|---:|---:|---:|")
    with tempfile.TemporaryDirectory() as folder:
        for mode in args.modes:
            model.train(mode == "train")
            sessions = onnx_sessions(model, Path(folder)) if mode == "onnx" else {}
            for size in args.sizes:
                image = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(1))
                runs: dict[str, Callable[[], Tensor]]
                if mode == "onnx":
                    runs = {name: partial(session, image) for name, session in sessions.items()}
                else:
                    runs = {name: eager(model, image, name, mode == "train") for name in FORMULATIONS}
                medians, difference = alternate(runs, args.repeat)
                print(f"| {size}² | {mode} | {medians['previous']:.2f} s | {medians['current']:.2f} s | "
                      f"{medians['previous'] / medians['current']:.2f}× | {difference:.1e} |", flush=True)  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
