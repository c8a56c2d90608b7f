"""The demo, start to end: make rainy photos, train a small DRSformer on them for a few minutes, show the result.

1. Clean photos come from scikit-image's bundled images (:mod:`.data`). Rain from
   :mod:`drsformer.data.synth_rain` is drawn on them, several seeds and densities per photo; whole photos are
   kept out of training for evaluation. The data depend on the seed only.
2. Training runs through :func:`drsformer.engine.trainer.train`, from ``options/train/Demo_CPU.yml``, like any
   ``drsformer train`` run. Time ends it: the number of iterations is estimated from a timing of the model's
   training step (:mod:`drsformer.timing`), the schedule is fitted to it, and ``train.time_budget`` stops the
   run when the minutes are used.
3. The held-out photos are restored and scored through the ``drsformer test`` path (``restormer`` protocol).
4. It writes a comparison picture, a training curve, the checkpoint, the TensorBoard run and ``summary.json``.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..config import read_training_options
from ..data.io import read_image, write_image
from ..errors import ConfigError, MissingPathError
from ..evaluation.scores import SetScores
from .data import HELD_OUT_PHOTOS, TRAIN_PHOTOS, make_data
from .pictures import comparison_picture, curve_picture

OPTIONS_FILE = Path(__file__).resolve().parents[2] / "options" / "train" / "Demo_CPU.yml"
MARKER = ".drsformer-demo"  # marks a folder the demo made, so a rerun may replace it
PROTOCOL = "restormer"


@dataclass(frozen=True)
class DemoSettings:
    out: Path = Path("demo_output")
    minutes: float = 5.0
    device: str = "cpu"
    seed: int = 0
    size: int = 256  # short side of the photos
    max_iterations: int | None = None
    progress: bool = True

    def check(self) -> DemoSettings:
        if self.minutes <= 0 or self.size < 16:
            raise ConfigError("--minutes must be positive and --size at least 16")
        return self


def seconds_per_iteration(options: dict[str, Any], device: str, steps: int = 3) -> float:
    """Median time of a training step (the trainer's own) of the configured model and batch, after a warm-up."""
    from ..archs import DRSformer, build_network
    from ..timing import BenchSettings, run_paths

    data = options["datasets"]["train"]
    crop = data["gt_size"]
    settings = BenchSettings(crop, crop, data["batch_size_per_gpu"], "train", device, warmup=1, repeat=steps)
    model = build_network(options["network_g"])
    assert isinstance(model, DRSformer)  # every registered network_g type builds one
    (result,), _ = run_paths(model, settings, ["fast"])
    return result.median_ms / 1000


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


def prepare_out(out: Path) -> None:
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


def _make_data(demo: DemoSettings) -> tuple[dict[str, int], SetScores]:
    """1/4: the rainy photos, and the held-out set's scores before training."""
    from ..evaluation.folders import evaluate_folders

    out = demo.out
    print(f"1/4 making rainy photos from scikit-image's bundled images into {out / 'data'}", flush=True)
    counts = make_data(out / "data", demo.seed, demo.size)
    before = evaluate_folders(out / "data/test/input", out / "data/test/target", PROTOCOL, workers=1, progress=False)
    print(
        f"    {counts['train']} training pairs from {len(TRAIN_PHOTOS)} photos; {counts['test']} held-out pairs from "
        f"{', '.join(Path(p).stem for p in HELD_OUT_PHOTOS)}; rainy input Y-PSNR {before.mean('psnr'):.2f} dB",
        flush=True,
    )
    return counts, before


def _train(demo: DemoSettings) -> tuple[dict[str, Any], Path, list[dict[str, Any]], float]:
    """2/4: fits the schedule to the time budget and trains; returns the options, the run folder, the validation
    records and when training began (wall clock)."""
    from ..engine.trainer import train

    base = read_training_options(OPTIONS_FILE, [f"manual_seed={demo.seed}"]).options
    budget = demo.minutes * 60
    step = seconds_per_iteration(base, demo.device)
    iterations = int(budget / step * 0.9)  # validation and saving take the rest
    crop = min(base["datasets"]["train"]["gt_size"], demo.size // 8 * 8)  # photos smaller than a crop: smaller crops
    overrides = plan_overrides(demo.out, iterations, budget, demo.max_iterations, crop)
    options = read_training_options(OPTIONS_FILE, [f"manual_seed={demo.seed}", *overrides]).options
    data = options["datasets"]["train"]
    print(
        f"2/4 training {options['network_g']} for {demo.minutes:g} min on {demo.device}: about {step:.2f} s per "
        f"iteration of {data['batch_size_per_gpu']} crops of {data['gt_size']}x{data['gt_size']}, schedule fitted "
        f"to {options['train']['total_iter']} iterations",
        flush=True,
    )
    torch.manual_seed(demo.seed)
    began = time.time()
    run_dir = train(options, device=demo.device, progress=demo.progress)
    records = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    validations = [r for r in records if r["kind"] == "val"]
    if not validations:
        raise ConfigError(f"{run_dir / 'log.jsonl'}: the training run recorded no validation")
    return options, run_dir, validations, began


def _evaluate(out: Path, checkpoint: Path, device: str) -> tuple[SetScores, int]:
    """3/4: the held-out photos through the test path; returns the scores and the model's parameter count."""
    from ..archs import from_checkpoint
    from ..config.testing import TestSet
    from ..evaluation.restoring import restore_set
    from ..evaluation.sets import check_folders
    from ..inference import InferenceSettings

    print(f"3/4 restoring the held-out photos through the test path ({PROTOCOL} protocol)", flush=True)
    model = from_checkpoint(checkpoint).eval().to(device)
    held_out = TestSet("held-out", out / "data" / "test", PROTOCOL, str(checkpoint))
    check_folders(held_out)
    result = restore_set(held_out, model, out / "derained", InferenceSettings(), device, progress=False)
    return result, sum(p.numel() for p in model.parameters())


def _pictures(out: Path, before: SetScores, result: SetScores, points: list[tuple[float, float]]) -> None:
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
    write_image(out / "training_curve.png", curve_picture(points, before.mean("psnr") or 0.0))


def print_summary(out: Path, summary: dict[str, Any], run_dir: Path) -> None:
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


def run_demo(demo: DemoSettings) -> dict[str, Any]:
    """The four steps; writes everything under ``demo.out`` and returns the summary (also ``summary.json``)."""
    demo.check()
    if not OPTIONS_FILE.is_file():
        raise MissingPathError(f"{OPTIONS_FILE}: the demo's options file is missing; run the demo from a checkout")
    out, started, timings = demo.out, time.perf_counter(), {}
    prepare_out(out)
    counts, before = _make_data(demo)
    timings["data_s"] = time.perf_counter() - started
    options, run_dir, validations, began = _train(demo)
    timings["train_s"] = time.perf_counter() - started - timings["data_s"]
    checkpoint = run_dir / "models" / f"net_g_latest.{options['logger']['weights_format']}"
    result, parameters = _evaluate(out, checkpoint, demo.device)
    timings["eval_s"] = time.perf_counter() - started - timings["data_s"] - timings["train_s"]
    points = [(v["time"] - began, v["psnr"]) for v in validations]
    _pictures(out, before, result, points)
    timings["total_s"] = time.perf_counter() - started
    iterations, by_name = validations[-1]["iter"], {image["name"]: image for image in before.images}
    psnr_before, psnr_after = before.mean("psnr") or 0.0, result.mean("psnr") or 0.0
    summary = {
        "budget_minutes": demo.minutes,
        "device": demo.device,
        "seed": demo.seed,
        "iterations": iterations,
        "planned_iterations": options["train"]["total_iter"],
        "seconds_per_iteration": timings["train_s"] / max(iterations, 1),
        "model": options["network_g"],
        "parameters": parameters,
        "train_pairs": counts["train"],
        "held_out_pairs": counts["test"],
        "protocol": PROTOCOL,
        "psnr_before": psnr_before,
        "ssim_before": before.mean("ssim"),
        "psnr_after": psnr_after,
        "ssim_after": result.mean("ssim"),
        "psnr_gain": psnr_after - psnr_before,
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
    print_summary(out, summary, run_dir)
    return summary
