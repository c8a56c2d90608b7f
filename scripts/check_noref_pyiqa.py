"""Compares drsformer's NIQE and BRISQUE with pyiqa 0.1.16's, value by value and in speed. Not a CI test.

pyiqa is not a dependency; install it beside its few imports in a separate environment:

    python3 -m venv /tmp/venv-pyiqa
    /tmp/venv-pyiqa/bin/pip install torch==2.14.1 torchvision==0.29.1 numpy scipy opencv-python-headless pyyaml \
        requests tqdm huggingface_hub pillow scikit-image
    /tmp/venv-pyiqa/bin/pip install --no-deps pyiqa==0.1.16
    PYTHONPATH=. /tmp/venv-pyiqa/bin/python scripts/check_noref_pyiqa.py [--bench] [--write-fixtures]

pyiqa is created as the authors' ``eval_niqe_brisque.py`` creates it (``create_metric('niqe')``, ``('brisque')``:
the defaults) and called on file paths, as they call it, except that ``pretrained_model_path`` points at files
converted here from ``drsformer/metrics/noref_params.npz`` (``niqe_modelparameters.mat`` with ``mu_prisparam`` and
``cov_prisparam``; the ``(sv_coef, sv)`` pair that pyiqa's BRISQUE loads), since pyiqa would download them.

The images are made in ``--work``: scikit-image's sample photos (RGB and gray, at their odd sizes), crops, JPEG
copies, synthetic rain on some of them (``drsformer.data.synth_rain``), a 1920 x 1080 frame, and the test suite's
metric images. Values are compared with torch on one thread, where drsformer's BRISQUE always runs: pyiqa's
float32 reductions round differently on more threads, and the script reports how much that moves pyiqa's own
scores. ``--bench`` times both at 512 x 512 and 1920 x 1080 (one thread, and all cores for pyiqa).
``--write-fixtures`` writes ``tests/data/noref/pyiqa_reference.json`` (pyiqa's scores and BRISQUE features of the
test fixtures) after writing the fixture images it scores.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import TypedDict

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO / "tests" / "data" / "noref"
METRIC_IMAGES = REPO / "tests" / "data" / "metric_images"


def pyiqa_metrics(work: Path):
    """pyiqa's NIQE and BRISQUE with their defaults, reading parameters converted from our data file."""
    import pyiqa
    import scipy.io
    import torch

    from drsformer.metrics.noref import load_params

    params = load_params()
    mat, pth = work / "niqe_modelparameters.mat", work / "brisque_svm_weights.pth"
    scipy.io.savemat(mat, {"mu_prisparam": params.niqe_mu[None], "cov_prisparam": params.niqe_cov})
    torch.save((torch.from_numpy(params.brisque_coef.copy()), torch.from_numpy(params.brisque_sv.copy())), pth)
    niqe = pyiqa.create_metric("niqe", device="cpu", pretrained_model_path=str(mat))
    brisque = pyiqa.create_metric("brisque", device="cpu", pretrained_model_path=str(pth))
    return niqe, brisque


def pyiqa_brisque_features(path: Path) -> np.ndarray:
    """pyiqa's 36 BRISQUE features of a file (its own functions, float32), for the fixture file."""
    import torchvision.transforms.functional as TF
    from PIL import Image
    from pyiqa.archs.brisque_arch import natural_scene_statistics
    from pyiqa.matlab_utils import imresize
    from pyiqa.utils.color_util import to_y_channel

    x = to_y_channel(TF.to_tensor(Image.open(path).convert("RGB")).unsqueeze(0), 255.0)
    features = []
    for _ in range(2):
        features.append(natural_scene_statistics(x, 7, 7 / 6))
        x = imresize(x, scale=0.5, antialiasing=True)
    return np.concatenate([f[0].numpy() for f in features]).astype(np.float64)


def _write(path: Path, image: np.ndarray, params: list[int] | None = None) -> Path:
    from drsformer.data.io import write_image

    write_image(path, image, params)
    return path


def make_images(work: Path) -> list[Path]:
    """The comparison set: photos, crops, gray, JPEG, rain, a 1920 x 1080 frame, the test suite's images."""
    import skimage.data as sd

    from drsformer.data.synth_rain import add_rain

    folder = work / "images"
    rng = lambda k: np.random.default_rng(k)  # noqa: E731
    photos = {
        "astronaut": sd.astronaut(),
        "chelsea": sd.chelsea(),
        "coffee": sd.coffee(),
        "rocket": sd.rocket(),
        "immunohistochemistry": sd.immunohistochemistry(),
        "hubble": sd.hubble_deep_field(),
        "colorwheel": sd.colorwheel(),
    }
    grays = {"camera": sd.camera(), "coins": sd.coins(), "moon": sd.moon(), "page": sd.page()}
    paths = []
    for name, image in photos.items():
        paths.append(_write(folder / f"{name}.png", image))
    for name, image in grays.items():
        paths.append(_write(folder / f"{name}_gray.png", image))
    for k, (name, density) in enumerate([("astronaut", "medium"), ("coffee", "heavy"), ("rocket", "light")]):
        paths.append(_write(folder / f"{name}_rain_{density}.png", add_rain(photos[name], rng(k), density)))
    paths.append(_write(folder / "coffee_317x433.png", photos["coffee"][:317, 5:438]))
    paths.append(_write(folder / "chelsea_97x131.png", photos["chelsea"][40:137, 100:231]))
    paths.append(_write(folder / "camera_gray_201x299.png", grays["camera"][11:212, 100:399]))
    paths.append(_write(folder / "astronaut_q75.jpg", photos["astronaut"], [cv2.IMWRITE_JPEG_QUALITY, 75]))
    paths.append(
        _write(folder / "rocket_rain_q90.jpg", add_rain(photos["rocket"], rng(7)), [cv2.IMWRITE_JPEG_QUALITY, 90])
    )
    paths.append(_write(folder / "frame_1920x1080.png", frame_1080p()))
    paths += sorted(METRIC_IMAGES.glob("*.png"))
    return paths


def frame_1080p() -> np.ndarray:
    """A 1920 x 1080 rainy photo: scikit-image's rocket, resized, with medium synthetic rain."""
    import skimage.data as sd

    from drsformer.data.synth_rain import add_rain

    clean = cv2.resize(sd.rocket(), (1920, 1080), interpolation=cv2.INTER_CUBIC)
    return add_rain(clean, np.random.default_rng(3), "medium")


def ours(path: Path) -> dict[str, float]:
    from drsformer.evaluation.folders import score_file as score_image

    return score_image(path, ("niqe", "brisque"))


class ImageComparison(TypedDict):
    """One image's row of :func:`compare` (and of ``--json``)."""

    pyiqa: dict[str, float]  # niqe, brisque; torch on one thread
    ours: dict[str, float]
    rel: dict[str, float]  # |ours - pyiqa| / |pyiqa|, per metric
    abs_brisque: float
    brisque_all_cores: float  # pyiqa's BRISQUE with torch on every core
    abs_our_svr_of_pyiqa_features: float  # our SVR on pyiqa's features, against pyiqa's score
    brisque_features_rel: float  # max relative difference of the 36 features


def compare(paths: list[Path], niqe, brisque) -> dict[str, ImageComparison]:
    """Both tools on every image, torch on one thread (the ``rel`` and ``abs_brisque`` columns); pyiqa's BRISQUE is
    also run on all cores, whose float32 reductions round differently (``brisque_all_cores``)."""
    import torch

    from drsformer.data.io import read_image, to_uint8
    from drsformer.metrics.noref import brisque_features, brisque_from_features

    cores = os.cpu_count() or 1
    rows: dict[str, ImageComparison] = {}
    print(
        "| image | size | NIQE pyiqa | NIQE ours | rel. diff | BRISQUE pyiqa | BRISQUE ours | rel. diff | abs. diff |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for path in paths:
        torch.set_num_threads(cores)
        all_cores = float(brisque(str(path)).item())
        torch.set_num_threads(1)
        reference = {"niqe": float(niqe(str(path)).item()), "brisque": float(brisque(str(path)).item())}
        mine = ours(path)
        image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        if image is None:
            raise SystemExit(f"{path}: OpenCV cannot read it")
        h, w = image.shape[:2]
        rel = {k: abs(mine[k] - reference[k]) / abs(reference[k]) for k in reference}
        abs_b = abs(mine["brisque"] - reference["brisque"])
        # pyiqa's own features scored by our SVR, and our features against its: which step a difference comes from
        their_features = pyiqa_brisque_features(path)
        my_features = brisque_features(to_uint8(read_image(path)))
        rows[path.name] = ImageComparison(
            pyiqa=reference,
            ours=mine,
            rel=rel,
            abs_brisque=abs_b,
            brisque_all_cores=all_cores,
            abs_our_svr_of_pyiqa_features=abs(brisque_from_features(their_features) - reference["brisque"]),
            brisque_features_rel=float(np.max(np.abs(my_features - their_features) / np.abs(their_features))),
        )
        print(
            f"| {path.name} | {w}x{h} | {reference['niqe']:.6f} | {mine['niqe']:.6f} | {rel['niqe']:.1e} | "
            f"{reference['brisque']:.4f} | {mine['brisque']:.4f} | {rel['brisque']:.1e} | {abs_b:.4f} |"
        )
    n = len(rows)
    worst_niqe = max(r["rel"]["niqe"] for r in rows.values())
    worst_niqe_abs = max(abs(r["ours"]["niqe"] - r["pyiqa"]["niqe"]) for r in rows.values())
    worst_b = max(r["rel"]["brisque"] for r in rows.values())
    worst_b_abs = max(r["abs_brisque"] for r in rows.values())
    print(f"\n{n} images, torch on 1 thread.")
    print(f"NIQE: max relative difference {worst_niqe:.1e}, max absolute {worst_niqe_abs:.1e}.")
    print(f"BRISQUE: max relative difference {worst_b:.1e}, max absolute {worst_b_abs:.1e}.")
    svr = max(r["abs_our_svr_of_pyiqa_features"] for r in rows.values())
    features = max(r["brisque_features_rel"] for r in rows.values())
    print(f"BRISQUE features: max relative difference {features:.1e}.")
    print(f"BRISQUE of pyiqa's own features by our SVR: max absolute difference from pyiqa's score {svr:.1e}.")
    spread = [abs(r["brisque_all_cores"] - r["pyiqa"]["brisque"]) for r in rows.values()]
    spread_rel = [d / abs(r["pyiqa"]["brisque"]) for d, r in zip(spread, rows.values(), strict=True)]
    print(
        f"pyiqa's own BRISQUE on {cores} threads against 1 thread: max relative difference {max(spread_rel):.1e}, "
        f"max absolute {max(spread):.1e}."
    )
    return rows


def _best_time(fn, repeats: int) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process) of the fastest of ``repeats`` calls: the least disturbed by
    other work on a shared machine. CPU seconds add up every thread, so they are the cost in core-seconds."""
    best = (math.inf, math.inf)
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        fn()
        best = min(best, (time.perf_counter() - wall, time.process_time() - cpu))
    return best


def bench(work: Path, niqe, brisque, repeats: int) -> None:
    """Seconds per image from file to score, fastest of ``repeats``: one thread each, then pyiqa on all cores."""
    import skimage.data as sd
    import torch

    from drsformer.data.synth_rain import add_rain
    from drsformer.evaluation.folders import score_file as score_image

    images = {
        "512x512": _write(work / "bench_512.png", add_rain(sd.astronaut(), np.random.default_rng(1))),
        "1920x1080": _write(work / "bench_1080p.png", frame_1080p()),
    }
    cores = os.cpu_count() or 1
    print(f"\nwall seconds per image (CPU seconds in brackets), fastest of {repeats}")
    print(f"\n| image | metric | pyiqa, 1 thread | pyiqa, {cores} threads | ours, 1 thread | pyiqa / ours, 1 thread |")
    print("|---|---|---:|---:|---:|---:|")
    for size, path in images.items():
        for name, metric in (("NIQE", niqe), ("BRISQUE", brisque)):
            ours_fn = functools.partial(score_image, path, (name.lower(),))
            theirs_fn = functools.partial(metric, str(path))
            torch.set_num_threads(cores)
            cv2.setNumThreads(cores)
            theirs_fn()  # warm-up
            theirs_all = _best_time(theirs_fn, repeats)
            torch.set_num_threads(1)
            cv2.setNumThreads(1)
            ours_fn()
            theirs = _best_time(theirs_fn, repeats)
            mine = _best_time(ours_fn, repeats)
            cells = [f"{w:.3f} s ({c:.3f})" for w, c in (theirs, theirs_all, mine)]
            print(f"| {size} | {name} | {' | '.join(cells)} | {theirs[0] / mine[0]:.1f}x |")


def write_fixtures(niqe, brisque) -> None:
    """The test fixtures: gray, odd-size and JPEG files (small), plus two of the suite's metric images; pyiqa on
    one thread, as our BRISQUE runs."""
    import skimage.data as sd
    import torch

    torch.set_num_threads(1)

    FIXTURES.mkdir(parents=True, exist_ok=True)
    files = [
        _write(FIXTURES / "camera_gray_201x299.png", sd.camera()[11:212, 100:399]),
        _write(FIXTURES / "chelsea_97x131.png", sd.chelsea()[40:137, 100:231]),
        _write(FIXTURES / "coffee_233x347_q85.jpg", sd.coffee()[60:293, 200:547], [cv2.IMWRITE_JPEG_QUALITY, 85]),
        METRIC_IMAGES / "rain200h_1_rainy.png",
        METRIC_IMAGES / "didddn_1_drsformer.png",
    ]
    reference = {}
    for path in files:
        reference[str(path.relative_to(REPO / "tests" / "data"))] = {
            "niqe": float(niqe(str(path)).item()),
            "brisque": float(brisque(str(path)).item()),
            "brisque_features": pyiqa_brisque_features(path).tolist(),
        }
    out = FIXTURES / "pyiqa_reference.json"
    out.write_text(json.dumps({"pyiqa": "0.1.16", "images": reference}, indent=1) + "\n")
    print(f"wrote {out}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=Path("/tmp/noref_check"), help="folder for images and files")
    parser.add_argument("--bench", action="store_true", help="also time both at 512x512 and 1920x1080")
    parser.add_argument("--repeats", type=int, default=5, help="timing runs per image and metric (the fastest)")
    parser.add_argument("--write-fixtures", action="store_true", help="write tests/data/noref/ and its references")
    parser.add_argument("--json", type=Path, help="write every image's scores and differences here")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    niqe, brisque = pyiqa_metrics(args.work)
    if args.write_fixtures:
        write_fixtures(niqe, brisque)
    rows = compare(make_images(args.work), niqe, brisque)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    if args.bench:
        bench(args.work, niqe, brisque, args.repeats)
    return 0


if __name__ == "__main__":
    sys.exit(main())
