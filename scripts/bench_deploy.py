"""CPU inference paths side by side: PyTorch eager fp32 and bf16, ONNX Runtime with and without its graph
optimisations, and the authors' architecture file, on the same weights and inputs.

    python scripts/bench_deploy.py --authors-arch /path/to/DRSformer_arch.py --sizes 128 512 1024
    python scripts/bench_deploy.py --authors-arch /path/to/DRSformer_arch.py --sizes 256 512 --one-process \\
        --paths eager-fp32 eager-bf16 onnx authors        # one process, alternating, the same host memory for all
    python scripts/bench_deploy.py --weights demo_output/run/models/net_g_latest.pth --pairs demo_output/data/test \\
        --paths eager-fp32 eager-bf16 onnx            # PSNR of each path on real pairs (the demo's held-out photos)

The authors' file is read at run time from the path given (it needs ``einops``); nothing of it is copied here.
Weights: ``--weights`` or the full model with random weights (seed 0). ONNX paths use ``--onnx FILE``, or an
export made once at the start (``drsformer export``'s tracing, without its checks; this script compares every
output itself). Each (path, size) runs in a fresh process: peak memory is that process's resident-set high-water
mark after the model and input are built ("base" is the resident set then). Times are the median of
``--repeat`` runs after one warm-up. "max diff" is the largest difference from eager fp32 on the same input.
This package's paths prepare host memory as ``drsformer derain`` does (huge pages, freed memory kept; set
``THP_MEM_ALLOC_ENABLE=0`` or ``MALLOC_MMAP_MAX_`` to compare without); the authors' path gets the environment as
it is. With ``--one-process`` every path runs in this process instead, alternating (the order reversed every
other round, so that a drift in the machine's speed falls on all), and the authors' path gets the same host
memory as ours; peak memory is then not reported.
"""

from __future__ import annotations

import argparse
import importlib.util
import inspect
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from drsformer.memory import peak_mb, prepare_host_memory, reset_peak, resident_mb
from drsformer.timing import cpu_description

PATHS = ("eager-fp32", "eager-bf16", "onnx", "onnx-noopt", "onnx-fp16", "authors")


def load_model(weights: str | None):
    from drsformer.archs import DRSformer
    from drsformer.archs.checkpoint import load_model as load

    if weights:
        return load(weights)[0].eval()
    torch.manual_seed(0)
    return DRSformer().eval()


def authors_model(arch_file: str, ours):
    """The authors' DRSformer class from ``arch_file``, built with our model's configuration and weights."""
    spec = importlib.util.spec_from_file_location("authors_drsformer_arch", arch_file)
    if spec is None or spec.loader is None:
        raise SystemExit(f"{arch_file}: not a Python file")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    accepted = inspect.signature(module.DRSformer).parameters
    config = {k: v for k, v in ours.config.items() if k in accepted}
    model = module.DRSformer(**config).eval()
    model.load_state_dict(ours.state_dict(), strict=True)
    return model


def make_runner(path: str, args: argparse.Namespace, model):
    from drsformer.archs.padding import crop_to, pad_to_multiple
    from drsformer.deploy.runtime import OnnxModel

    if path == "eager-fp32":
        return model
    if path == "eager-bf16":

        def run(x):
            with torch.autocast("cpu", dtype=torch.bfloat16):
                return model(x).float()

        return run
    if path in ("onnx", "onnx-noopt"):
        return OnnxModel(args.onnx, optimization="all" if path == "onnx" else "none")
    if path == "onnx-fp16":
        return OnnxModel(args.onnx_fp16)
    if path == "authors":
        authors = authors_model(args.authors_arch, model)

        def run(x):
            padded, size = pad_to_multiple(x, 8)  # as the authors' test script pads
            return crop_to(authors(padded), size)

        return run
    raise SystemExit(f"unknown path {path}")


def child(args: argparse.Namespace) -> None:
    """One (path, input) measurement; writes JSON and the output array."""
    torch.set_num_threads(args.threads)
    if args.path != "authors":  # as derain does; the authors' code runs as its users get it
        prepare_host_memory(inference=True)
    model = load_model(args.weights)
    run = make_runner(args.path, args, model)
    if args.input_npy:
        image = torch.from_numpy(np.load(args.input_npy))
    else:
        generator = torch.Generator().manual_seed(1)
        image = torch.rand(1, 3, args.height, args.width, generator=generator)
    base = resident_mb()
    reset_peak()
    times = []
    with torch.inference_mode():
        for i in range(args.repeat + 1 if args.repeat else 1):
            start = time.perf_counter()
            out = run(image)
            if i or not args.repeat:  # the first run is the warm-up, unless it is the only one (--repeat 0)
                times.append(time.perf_counter() - start)
    np.save(args.out_npy, out.float().clamp(0, 1).numpy())
    result = {"median_s": statistics.median(times), "times_s": times, "peak_mb": peak_mb(), "base_mb": base}
    Path(args.out_json).write_text(json.dumps(result))


def measure(args, path: str, tmp: Path, height: int = 0, width: int = 0, input_npy: str | None = None, repeat=None):
    tag = f"{path}_{height}x{width}_{Path(input_npy).stem if input_npy else 'rand'}"
    out_json, out_npy = tmp / f"{tag}.json", tmp / f"{tag}.npy"
    command = [
        sys.executable, __file__, "--child", "--path", path, "--height", str(height), "--width", str(width),
        "--threads", str(args.threads), "--repeat", str(args.repeat if repeat is None else repeat),
        "--out-json", str(out_json), "--out-npy", str(out_npy),
    ]  # fmt: skip
    options = (("--weights", args.weights), ("--onnx", args.onnx), ("--onnx-fp16", args.onnx_fp16))
    for flag, value in (*options, ("--authors-arch", args.authors_arch)):
        if value:
            command += [flag, value]
    if input_npy:
        command += ["--input-npy", input_npy]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode:
        tail = (done.stderr.strip().splitlines() or ["killed"])[-1]
        return {"error": tail[:160]}, None
    return json.loads(out_json.read_text()), np.load(out_npy)


def export_once(args: argparse.Namespace, tmp: Path) -> str:
    from drsformer.deploy import graph

    model = load_model(args.weights)
    path = tmp / "model.onnx"
    start = time.perf_counter()
    graph.export_onnx(graph.module_for(model, "onnx"), graph.example_input(64, 64), True, path)
    print(f"exported {path} in {time.perf_counter() - start:.0f} s", flush=True)
    return str(path)


def speed_table(args: argparse.Namespace, tmp: Path) -> list[dict]:
    rows = []
    header = (
        f"{'size':>10} {'path':>11} {'s/image':>9} {'vs authors':>10} {'peak MB':>8} {'base MB':>8} {'max diff':>9}"
    )
    print(header + "\n" + "-" * len(header), flush=True)
    for size in args.sizes:
        h, w = size
        results, outputs = {}, {}
        for path in args.paths:
            repeat = args.repeat if h * w <= 512 * 512 else args.repeat_large
            results[path], outputs[path] = measure(args, path, tmp, h, w, repeat=repeat)
        reference = outputs.get("eager-fp32")
        authors = results.get("authors", {}).get("median_s")
        for path in args.paths:
            r = results[path]
            row = {"size": f"{h}x{w}", "path": path, **r}
            if "error" in r:
                print(f"{h}x{w:<6} {path:>11}  failed: {r['error']}", flush=True)
                rows.append(row)
                continue
            diff = float(np.abs(outputs[path] - reference).max()) if reference is not None else float("nan")
            row["max_diff"] = diff
            ratio = authors / r["median_s"] if authors else float("nan")
            row["speedup_vs_authors"] = ratio
            print(
                f"{h}x{w:<6} {path:>11} {r['median_s']:>9.2f} {ratio:>9.2f}x {r['peak_mb']:>8.0f} "
                f"{r['base_mb']:>8.0f} {diff:>9.1e}",
                flush=True,
            )
            rows.append(row)
    return rows


def alternating_table(args: argparse.Namespace) -> list[dict]:
    """Every path in this process, alternating, with the same host memory (the issue-29 protocol)."""
    prepare_host_memory(inference=True)
    torch.set_num_threads(args.threads)
    model = load_model(args.weights)
    runners = {path: make_runner(path, args, model) for path in args.paths}
    header = f"{'size':>10} {'path':>11} {'s/image':>9} {'vs authors':>10} {'vs fp32':>8} {'max diff':>9}  runs (s)"
    print(header + "\n" + "-" * len(header), flush=True)
    rows = []
    for h, w in args.sizes:
        image = torch.rand(1, 3, h, w, generator=torch.Generator().manual_seed(1))
        times: dict[str, list[float]] = {path: [] for path in args.paths}
        outputs = {}
        with torch.inference_mode():
            for path, run in runners.items():  # warm-up
                outputs[path] = run(image).float()
            for i in range(args.repeat):
                for path in args.paths if i % 2 == 0 else args.paths[::-1]:
                    start = time.perf_counter()
                    runners[path](image)
                    times[path].append(time.perf_counter() - start)
        medians = {path: statistics.median(t) for path, t in times.items()}
        reference = outputs.get("eager-fp32", outputs[args.paths[0]])
        for path in args.paths:
            diff = (outputs[path] - reference).abs().max().item()
            vs_authors = medians["authors"] / medians[path] if "authors" in medians else float("nan")
            vs_fp32 = medians["eager-fp32"] / medians[path] if "eager-fp32" in medians else float("nan")
            runs = " ".join(f"{t:.2f}" for t in times[path])
            ratios = f"{vs_authors:>9.2f}x {vs_fp32:>7.2f}x"
            print(f"{h}x{w:<6} {path:>11} {medians[path]:>9.2f} {ratios} {diff:>9.1e}  {runs}", flush=True)
            rows.append({"size": f"{h}x{w}", "path": path, "median_s": medians[path], "times_s": times[path],
                         "speedup_vs_authors": vs_authors, "speedup_vs_fp32": vs_fp32, "max_diff": diff})  # fmt: skip
    return rows


def psnr_table(args: argparse.Namespace, tmp: Path) -> list[dict]:
    """Y-PSNR of each path on real pairs (the protocol of the paper's tables), and the change from eager fp32."""
    from drsformer.data.io import list_images, match_files, read_image
    from drsformer.inference import image_to_tensor, tensor_to_image
    from drsformer.metrics import evaluate_pair

    inputs = list_images(Path(args.pairs) / "input")
    pairs = match_files(inputs, list_images(Path(args.pairs) / "target")).pairs
    scores: dict[str, list[float]] = {p: [] for p in args.paths}
    for rainy, clean in pairs:
        npy = tmp / f"{Path(rainy).stem}.npy"
        np.save(npy, image_to_tensor(read_image(rainy)).numpy())
        for path in args.paths:
            _, out = measure(args, path, tmp, input_npy=str(npy), repeat=1)
            restored = tensor_to_image(torch.from_numpy(out))
            scores[path].append(evaluate_pair(restored, read_image(clean), "restormer").psnr)
    rows = []
    base = statistics.mean(scores[args.paths[0]])
    print(f"\nY-PSNR on {len(pairs)} pairs of {args.pairs} (change from {args.paths[0]}):")
    for path in args.paths:
        mean = statistics.mean(scores[path])
        per_image = ", ".join(f"{s:.3f}" for s in scores[path])
        print(f"{path:>11} {mean:8.3f} dB  {mean - base:+.4f} dB   ({per_image})")
        rows.append({"path": path, "psnr": mean, "change_db": mean - base, "per_image": scores[path]})
    return rows


def main() -> None:
    from drsformer.commands.args import parse_size

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", help="a checkpoint (default: the full model with random weights, seed 0)")
    parser.add_argument("--paths", nargs="+", choices=PATHS, default=None)
    parser.add_argument("--sizes", type=parse_size, nargs="+", default=[(128, 128), (512, 512), (1024, 1024)])
    parser.add_argument("--authors-arch", help="the authors' DRSformer_arch.py, for the 'authors' path")
    parser.add_argument("--onnx", help="an exported .onnx of the same weights (default: export one first)")
    parser.add_argument("--onnx-fp16", help="an fp16 export (drsformer export --precision fp16), for 'onnx-fp16'")
    parser.add_argument("--pairs", help="DIR with input/ and target/: PSNR of each path instead of timing")
    parser.add_argument("--repeat", type=int, default=3, help="timed runs per path up to 512x512")
    parser.add_argument(
        "--repeat-large", type=int, default=1, help="timed runs per path above 512x512 (0: one run, no warm-up)"
    )
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument("--one-process", action="store_true", help="all paths in this process, alternating")
    for hidden in ("--path", "--out-json", "--out-npy", "--input-npy"):
        parser.add_argument(hidden, help=argparse.SUPPRESS)
    parser.add_argument("--height", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--width", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    if args.paths is None:
        args.paths = [
            p for p in PATHS if (p != "authors" or args.authors_arch) and (p != "onnx-fp16" or args.onnx_fp16)
        ]
    if "onnx-fp16" in args.paths and not args.onnx_fp16:
        parser.error("the onnx-fp16 path needs --onnx-fp16 FILE")
    if "authors" in args.paths and not args.authors_arch:
        parser.error("the authors path needs --authors-arch FILE")
    print(f"torch {torch.__version__}, {cpu_description()}, {args.threads} threads", flush=True)
    with tempfile.TemporaryDirectory() as folder:
        tmp = Path(folder)
        if any(p in ("onnx", "onnx-noopt") for p in args.paths) and not args.onnx:
            args.onnx = export_once(args, tmp)
        if args.pairs:
            rows = psnr_table(args, tmp)
        else:
            rows = alternating_table(args) if args.one_process else speed_table(args, tmp)
    if args.json:
        Path(args.json).write_text(
            json.dumps({"threads": args.threads, "torch": torch.__version__, "rows": rows}, indent=2)
        )


if __name__ == "__main__":
    main()
