"""``drsformer demo``: make rainy photos, train a small DRSformer on them for a few minutes, and show the result.

1. Clean photos come from scikit-image's bundled images (inside the installed package, never downloaded).
   Rain from :mod:`drsformer.data.synth_rain` is drawn on them, several seeds and densities per photo; whole
   photos are kept out of training for evaluation. The data depend on ``--seed`` only.
2. Training runs through :class:`drsformer.engine.trainer.Trainer`, from ``options/train/Demo_CPU.yml``, like
   any ``drsformer train`` run. Time ends it: the number of iterations is estimated from a short timing of the
   model, the schedule is fitted to it, and ``train.time_budget`` stops the run when the minutes are used.
3. The held-out photos are restored and scored through the ``drsformer test`` path (``restormer`` protocol).
4. It writes a comparison picture, a training curve, the checkpoint, the TensorBoard run and ``summary.json``.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from .config import read_training_options
from .data.io import read_image, to_uint8, write_image
from .data.synth_rain import add_rain, pair_rng
from .devices import resolve_device
from .errors import ConfigError, MissingPathError

# scikit-image's bundled photos (skimage/data inside the wheel). Training: colour and grey natural images.
TRAIN_PHOTOS = (
    "astronaut.png",
    "hubble_deep_field.jpg",
    "ihc.png",
    "motorcycle_left.png",
    "motorcycle_right.png",
    "camera.png",
    "grass.png",
    "gravel.png",
    "brick.png",
    "coins.png",
    "moon.png",
    "clock_motion.png",
    "retina.jpg",
)
HELD_OUT_PHOTOS = ("chelsea.png", "rocket.jpg", "coffee.png")  # never seen in training
DENSITIES = ("medium", "heavy")
RAINY_VERSIONS = 3  # per photo and density, for training
OPTIONS_FILE = Path(__file__).resolve().parents[1] / "options" / "train" / "Demo_CPU.yml"
MARKER = ".drsformer-demo"  # marks a folder the demo made, so a rerun may replace it
PANEL_WIDTH = 220


def bundled_photo(name: str) -> np.ndarray:
    """One of scikit-image's bundled photos as H x W x 3 uint8 RGB."""
    import skimage

    path = Path(skimage.__file__).parent / "data" / name
    if not path.is_file():
        raise MissingPathError(f"{path}: not in this scikit-image installation; reinstall scikit-image")
    return to_uint8(read_image(path))


def resize_short_side(image: np.ndarray, short: int) -> np.ndarray:
    height, width = image.shape[:2]
    scale = short / min(height, width)
    size = (max(8, round(width * scale)), max(8, round(height * scale)))
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA)


def make_data(root: Path, seed: int, short_side: int) -> dict[str, int]:
    """Writes ``root/{train,test}/{input,target}``; returns the number of pairs per split."""
    counts = {}
    for split, photos, versions, offset in (
        ("train", TRAIN_PHOTOS, RAINY_VERSIONS, 0),
        ("test", HELD_OUT_PHOTOS, 1, 1),
    ):
        count = 0
        for photo in photos:
            clean = resize_short_side(bundled_photo(photo), short_side)
            for density in DENSITIES:
                for k in range(versions):
                    rng = pair_rng(seed * 2 + offset, f"{photo}:{density}", k)
                    name = f"{Path(photo).stem}_{density}_{k}.png"
                    write_image(root / split / "input" / name, add_rain(clean, rng, density))
                    write_image(root / split / "target" / name, clean)
                    count += 1
        counts[split] = count
    return counts


def seconds_per_iteration(options: dict[str, Any], device: str, steps: int = 3) -> float:
    """Median time of a training step of the configured model and batch (after one warm-up step)."""
    from .archs import build_network

    network = build_network(options["network_g"]).to(device)
    data = options["datasets"]["train"]
    batch = torch.rand(data["batch_size_per_gpu"], 3, data["gt_size"], data["gt_size"], device=device)
    optimizer = torch.optim.AdamW(network.parameters(), lr=1e-4)
    times = []
    for _ in range(steps + 1):
        start = time.perf_counter()
        loss = (network(batch) - batch).abs().mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return float(np.median(times[1:]))


def plan_overrides(out: Path, iterations: int, budget_s: float, max_iterations: int | None, crop: int) -> list[str]:
    """The keys the demo sets in Demo_CPU.yml: data, run folder, crop, iterations, schedule, validation points."""
    if max_iterations is not None:
        iterations = min(iterations, max_iterations)
    iterations = max(iterations, 2)
    constant = max(1, round(0.3 * iterations))
    data = out / "data"
    return [
        f"datasets.train.dataroot_lq={data / 'train/input'}",
        f"datasets.train.dataroot_gt={data / 'train/target'}",
        f"datasets.val.dataroot_lq={data / 'test/input'}",
        f"datasets.val.dataroot_gt={data / 'test/target'}",
        f"path.experiments_root={out / 'run'}",
        f"datasets.train.gt_size={crop}",
        f"train.total_iter={iterations}",
        f"train.time_budget={budget_s}",
        f"train.scheduler.periods=[{constant}, {iterations - constant}]",
        f"val.val_freq={max(1, iterations // 10)}",
    ]


# ----------------------------------------------------------------------------------------------------------------
# Pictures


def _label(image: np.ndarray, lines: list[str]) -> np.ndarray:
    image = image.copy()
    for i, text in enumerate(lines):
        origin = (6, 18 + 18 * i)
        for color, thickness in (((0, 0, 0), 3), ((255, 255, 255), 1)):  # outlined: readable on any background
            cv2.putText(image, text, origin, cv2.FONT_HERSHEY_SIMPLEX, 0.5, color, thickness, cv2.LINE_AA)
    return image


def comparison_picture(rows: list[dict[str, Any]], panel_width: int = PANEL_WIDTH) -> np.ndarray:
    """rainy | derained | clean for each held-out photo, PSNR written on each panel (uint8 RGB)."""
    gap = 4
    strips = []
    for row in rows:
        panels = []
        for key, title in (("rainy", "rainy"), ("derained", "derained"), ("clean", "clean")):
            image = row[key]
            height = round(image.shape[0] * panel_width / image.shape[1])
            small = cv2.resize(image, (panel_width, height), interpolation=cv2.INTER_AREA)
            text = [title] + ([f"{row[key + '_psnr']:.2f} dB"] if key + "_psnr" in row else ["reference"])
            panels += [_label(small, text), np.full((height, gap, 3), 255, np.uint8)]
        strips += [np.concatenate(panels[:-1], axis=1), None]
    width = max(s.shape[1] for s in strips if s is not None)
    out = []
    for strip in strips:
        out.append(np.full((gap, width, 3), 255, np.uint8) if strip is None else strip)
    return np.concatenate(out[:-1], axis=0)


def _nice_step(rough: float) -> float:
    """1, 2 or 5 times a power of ten, at least ``rough``."""
    power = 10 ** math.floor(math.log10(max(rough, 1e-9)))
    return next(m * power for m in (1, 2, 5, 10) if m * power >= rough)


def curve_picture(points: list[tuple[float, float]], baseline: float, size: tuple[int, int] = (640, 360)) -> np.ndarray:
    """Validation Y-PSNR (dB) against training time (s), with the rainy input's PSNR as a dashed line."""
    points = [(t, v) for t, v in points if math.isfinite(v)]
    width, height = size
    left, right, top, bottom = 60, 20, 30, 45
    image = np.full((height, width, 3), 255, np.uint8)
    times = [t for t, _ in points] or [0.0]
    values = [v for _, v in points] + [baseline]
    t_max = max(max(times), 1e-6)
    low, high = math.floor(min(values) - 0.5), math.ceil(max(values) + 0.5)

    def xy(t: float, v: float) -> tuple[int, int]:
        x = left + (width - left - right) * t / t_max
        y = height - bottom - (height - top - bottom) * (v - low) / max(high - low, 1e-6)
        return round(x), round(y)

    black, grey, blue = (0, 0, 0), (150, 150, 150), (31, 119, 180)
    font = cv2.FONT_HERSHEY_SIMPLEX
    cv2.line(image, (left, height - bottom), (width - right, height - bottom), black, 1)
    cv2.line(image, (left, top), (left, height - bottom), black, 1)
    step = max(1, math.ceil((high - low) / 6))
    for v in range(low, high + 1, step):
        _, y = xy(0, v)
        cv2.line(image, (left - 4, y), (left, y), black, 1)
        cv2.putText(image, f"{v}", (left - 40, y + 4), font, 0.4, black, 1, cv2.LINE_AA)
    tick = _nice_step(t_max / 5)
    for k in range(int(t_max // tick) + 1):
        t = k * tick
        x, _ = xy(t, low)
        cv2.line(image, (x, height - bottom), (x, height - bottom + 4), black, 1)
        cv2.putText(image, f"{t:.0f}", (x - 10, height - bottom + 18), font, 0.4, black, 1, cv2.LINE_AA)
    cv2.putText(image, "training time (s)", (width // 2 - 60, height - 8), font, 0.45, black, 1, cv2.LINE_AA)
    cv2.putText(image, "held-out Y-PSNR (dB)", (left, top - 10), font, 0.45, black, 1, cv2.LINE_AA)
    _, y = xy(0, baseline)
    for x in range(left, width - right, 12):  # dashed: the rainy input
        cv2.line(image, (x, y), (min(x + 6, width - right), y), grey, 1)
    cv2.putText(image, f"rainy input {baseline:.2f} dB", (width - 190, y - 6), font, 0.4, grey, 1, cv2.LINE_AA)
    pixels = [xy(t, v) for t, v in points]
    for a, b in zip(pixels, pixels[1:], strict=False):
        cv2.line(image, a, b, blue, 2, cv2.LINE_AA)
    for p in pixels:
        cv2.circle(image, p, 3, blue, -1, cv2.LINE_AA)
    return image


# ----------------------------------------------------------------------------------------------------------------
# The command


def _prepare_out(out: Path) -> None:
    """Empties a folder the demo made before; refuses to touch any other non-empty folder."""
    if out.exists() and any(out.iterdir()):
        if not (out / MARKER).exists():
            raise ConfigError(f"--out {out}: exists and was not made by drsformer demo; choose another folder")
        for name in ("data", "run", "derained", "comparison.png", "training_curve.png", "summary.json"):
            path = out / name
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).write_text("made by drsformer demo; a rerun replaces this folder's contents\n")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="demo_output", help="folder for everything the demo writes (demo_output)")
    parser.add_argument("--minutes", type=float, default=5.0, help="training time budget (default 5)")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="default cpu")
    parser.add_argument("--seed", type=int, default=0, help="seed of the rain and the training run")
    parser.add_argument("--size", type=int, default=256, help="short side of the demo photos in pixels (256)")
    parser.add_argument("--max-iterations", type=int, default=None, help="stop after this many iterations too")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def _make_data(out: Path, args: argparse.Namespace) -> tuple[dict[str, int], Any]:
    """1/4: the rainy photos, and the held-out set's scores before training."""
    from .metrics.evaluate import evaluate_folders

    print(f"1/4 making rainy photos from scikit-image's bundled images into {out / 'data'}", flush=True)
    counts = make_data(out / "data", args.seed, args.size)
    before = evaluate_folders(out / "data/test/input", out / "data/test/target", "restormer", workers=1, progress=False)
    print(
        f"    {counts['train']} training pairs from {len(TRAIN_PHOTOS)} photos; {counts['test']} held-out pairs from "
        f"{', '.join(Path(p).stem for p in HELD_OUT_PHOTOS)}; rainy input Y-PSNR {before.psnr:.2f} dB",
        flush=True,
    )
    return counts, before


def _train(out: Path, args: argparse.Namespace) -> tuple[dict[str, Any], Path, list[dict[str, Any]], float]:
    """2/4: fits the schedule to the time budget and trains; returns the options, the run folder, the validation
    records and when training began (wall clock)."""
    from .engine.trainer import train

    base = read_training_options(OPTIONS_FILE, [f"manual_seed={args.seed}"]).options
    budget = args.minutes * 60
    step = seconds_per_iteration(base, args.device)
    iterations = int(budget / step * 0.9)  # validation and saving take the rest
    crop = min(base["datasets"]["train"]["gt_size"], args.size // 8 * 8)  # photos smaller than a crop: smaller crops
    overrides = plan_overrides(out, iterations, budget, args.max_iterations, crop)
    options = read_training_options(OPTIONS_FILE, [f"manual_seed={args.seed}", *overrides]).options
    data = options["datasets"]["train"]
    print(
        f"2/4 training {options['network_g']} for {args.minutes:g} min on {args.device}: about {step:.2f} s per "
        f"iteration of {data['batch_size_per_gpu']} crops of {data['gt_size']}x{data['gt_size']}, schedule fitted "
        f"to {options['train']['total_iter']} iterations",
        flush=True,
    )
    torch.manual_seed(args.seed)
    began = time.time()
    run_dir = train(options, device=args.device, progress=not args.no_progress)
    records = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    validations = [r for r in records if r["kind"] == "val"]
    if not validations:
        raise ConfigError(f"{run_dir / 'log.jsonl'}: the training run recorded no validation")
    return options, run_dir, validations, began


def _evaluate(out: Path, checkpoint: Path, device: str) -> tuple[Any, int]:
    """3/4: the held-out photos through the test path; returns the result and the model's parameter count."""
    from .archs import from_checkpoint
    from .inference import InferenceSettings
    from .test import DatasetJob, check_folders, run_dataset

    print("3/4 restoring the held-out photos through the test path (restormer protocol)", flush=True)
    model = from_checkpoint(checkpoint).eval().to(device)
    job = DatasetJob("held-out", out / "data" / "test", "restormer", str(checkpoint))
    check_folders(job)
    result = run_dataset(job, model, out / "derained", InferenceSettings(), device, progress=False)
    return result, sum(p.numel() for p in model.parameters())


def _pictures(out: Path, before: Any, result: Any, points: list[tuple[float, float]]) -> None:
    """4/4: the comparison picture (heavy-rain photos) and the training curve."""
    print("4/4 writing the pictures and the summary", flush=True)
    by_name = {image["name"]: image for image in before.images}
    shown = [image for image in result.images if "_heavy_" in image["name"]] or result.images
    rows = [
        {
            "rainy": read_image(out / "data/test/input" / image["name"]),
            "derained": read_image(out / "derained" / image["name"]),
            "clean": read_image(out / "data/test/target" / image["name"]),
            "rainy_psnr": by_name[image["name"]]["psnr"],
            "derained_psnr": image["psnr"],
        }
        for image in shown
    ]
    write_image(out / "comparison.png", comparison_picture(rows))
    write_image(out / "training_curve.png", curve_picture(points, before.psnr))


def _print_summary(out: Path, summary: dict[str, Any], run_dir: Path) -> None:
    before, after = summary["psnr_before"], summary["psnr_after"]
    checkpoint = summary["checkpoint"]
    print(
        f"\nheld-out Y-PSNR {before:.2f} dB -> {after:.2f} dB ({after - before:+.2f} dB), "
        f"SSIM {summary['ssim_before']:.4f} -> {summary['ssim_after']:.4f}, after {summary['iterations']} iterations "
        f"in {summary['timings']['train_s'] / 60:.1f} min ({summary['parameters']:,} parameters)"
    )
    print(f"  comparison picture  {out / 'comparison.png'}  (rainy | derained | clean)")
    print(f"  training curve      {out / 'training_curve.png'}")
    print(f"  checkpoint          {checkpoint}")
    print(f"  TensorBoard run     {run_dir / 'tb'}  (tensorboard --logdir {run_dir / 'tb'})")
    print(f"  summary             {out / 'summary.json'}")
    print("\nnext steps:")
    print(f"  derain your photos:      drsformer derain --weights {checkpoint} -i my_photos/ -o derained/")
    print("  benchmark a checkpoint:  drsformer test -opt options/test/Rain200H.yml   (weights in pretrained/)")
    print("  train on Rain200H:       drsformer prepare Rain200H --src RAW --dst datasets/Rain200H")
    print("                           drsformer train -opt options/train/Rain200H.yml")


def run(args: argparse.Namespace) -> int:
    if args.minutes <= 0 or args.size < 16:
        raise ConfigError("--minutes must be positive and --size at least 16")
    args.device = str(resolve_device(args.device))
    if not OPTIONS_FILE.is_file():
        raise MissingPathError(f"{OPTIONS_FILE}: the demo's options file is missing; run the demo from a checkout")
    out, started, timings = Path(args.out), time.perf_counter(), {}
    _prepare_out(out)
    counts, before = _make_data(out, args)
    timings["data_s"] = time.perf_counter() - started
    options, run_dir, validations, began = _train(out, args)
    timings["train_s"] = time.perf_counter() - started - timings["data_s"]
    checkpoint = run_dir / "models" / f"net_g_latest.{options['logger']['weights_format']}"
    result, parameters = _evaluate(out, checkpoint, args.device)
    timings["eval_s"] = time.perf_counter() - started - timings["data_s"] - timings["train_s"]
    points = [(v["time"] - began, v["psnr"]) for v in validations]
    _pictures(out, before, result, points)
    timings["total_s"] = time.perf_counter() - started
    iterations, by_name = validations[-1]["iter"], {image["name"]: image for image in before.images}
    summary = {
        "budget_minutes": args.minutes,
        "device": args.device,
        "seed": args.seed,
        "iterations": iterations,
        "planned_iterations": options["train"]["total_iter"],
        "seconds_per_iteration": timings["train_s"] / max(iterations, 1),
        "model": options["network_g"],
        "parameters": parameters,
        "train_pairs": counts["train"],
        "held_out_pairs": counts["test"],
        "protocol": "restormer",
        "psnr_before": before.psnr,
        "ssim_before": before.ssim,
        "psnr_after": result.mean("psnr"),
        "ssim_after": result.mean("ssim"),
        "psnr_gain": result.mean("psnr") - before.psnr,
        "timings": timings,
        "curve": [{"seconds": t, "psnr": p} for t, p in points],
        "images": [
            {
                "name": i["name"],
                "psnr_before": by_name[i["name"]]["psnr"],
                "psnr_after": i["psnr"],
                "ssim_after": i["ssim"],
            }
            for i in result.images
        ],
        "checkpoint": str(checkpoint),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    _print_summary(out, summary, run_dir)
    return 0


def main(argv: list[str] | None = None) -> int:
    from .cli import module_main

    return module_main("demo", argv)


if __name__ == "__main__":
    sys.exit(main())
