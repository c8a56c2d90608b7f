"""``drsformer test``: restore benchmark test sets, save the results and print the paper's table.

    drsformer test -opt options/test/Rain200H.yml
    drsformer test --weights W --data Rain200H=datasets/Rain200H/test --data DID=datasets/DID/test
    python -m drsformer.test -opt options/test/all.yml

Each dataset folder holds ``input/`` and ``target/`` with equal file names (what ``drsformer prepare`` writes).
Real rain has no ground truth: a folder without ``target/`` (holding ``input/``, or the images themselves) is
restored the same way and scored with NIQE and BRISQUE (pyiqa's definitions, as the authors score real rain, see
:mod:`drsformer.metrics.noref`), for the rainy input and the restored output side by side; lower is better.
Every input is restored as the authors' test script does (reflect-pad to a multiple of 8, run, clamp to [0, 1],
crop, round to uint8), saved losslessly as ``<out>/<dataset>/<input stem>.png`` and scored against its target
with the dataset's protocol (the paper's, from the benchmark catalogue, unless ``--protocol`` says otherwise).
Scores are computed on the same uint8 arrays that are saved, so ``drsformer evaluate`` on the saved folder gives
the same numbers. Everything that can be checked (weights, folders, pairing) is checked before any image runs;
an unreadable image is reported by name and skipped, and the exit status is then 1.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn
from tqdm import tqdm

from . import benchmarks, config, report
from .benchmarks import PROTOCOLS, Benchmark, resolve_protocol
from .data.io import list_images, match_files, name_list, read_image, to_uint8, write_image
from .devices import resolve_device
from .errors import ConfigError, EvaluationError, ImageReadError, ImageWriteError, MissingPathError
from .inference import InferenceSettings, image_to_tensor, restore_or_explain, tensor_to_image
from .memory import prefer_huge_pages
from .metrics import evaluate_pair, noref
from .precision import PRECISIONS
from .schema import Field, Ignored, Mapping, Section, check_section


def _optional(kind: str) -> Field:
    return Field(kind, None, nullable=True)


# What a test options file may hold, with defaults; checked by the same code as training options.
DATASET_SCHEMA: dict[str, Any] = {
    "path": Field("str"),
    "weights": _optional("str"),
    "params_key": _optional("str"),
    "protocol": _optional("str"),
}
SCHEMA: dict[str, Any] = {
    "name": _optional("str"),
    "weights": _optional("str"),
    "params_key": _optional("str"),  # default: what the file says its run validated, else params
    "protocol": _optional("str"),
    "out": Field("str", "results"),
    "json": _optional("str"),
    "device": _optional("str"),
    "precision": Field("str", "fp32", tuple(PRECISIONS)),
    "self_ensemble": Field("bool", False),
    "tile": _optional("int"),
    "tile_overlap": Ignored("tiles are exact, so they need no overlap"),
    "batch": Ignored("exact tiling runs one tile at a time"),
    "report": Field("bool", False),
    "compare_to": _optional("str"),
    "datasets": Mapping(Section(DATASET_SCHEMA)),
}
# Settings a command-line flag of the same name overrides: all but the name and the datasets.
FLAG_SETTINGS = tuple(k for k, v in SCHEMA.items() if k not in ("name", "datasets") and not isinstance(v, Ignored))


@dataclass
class DatasetJob:
    """One test set: where it is, how it is scored, which weights restore it."""

    name: str
    root: Path
    protocol: str | None  # None: not known yet, which is fine for a set without ground truth
    weights: str
    params_key: str | None = None  # None: the file's validated weights, else params
    benchmark: Benchmark | None = None
    pairs: list[tuple[Path, Path | None]] = field(default_factory=list)  # (input, target or None)
    origin: str = ""  # where the set was named (file key or flag), for messages
    targetless: bool = False  # no target/: scored with the no-reference metrics


@dataclass
class DatasetResult:
    """Scores of one test set; ``failed`` lists (file name, reason) of the images that did not run."""

    job: DatasetJob
    images: list[dict[str, Any]] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def count(self) -> int:
        return len(self.images)

    def mean(self, key: str) -> float | None:
        return math.fsum(i[key] for i in self.images) / self.count if self.images else None

    def to_dict(self) -> dict[str, Any]:
        if self.job.targetless:
            return self._noref_dict()
        bench = self.job.benchmark
        out = {
            "name": self.job.name,
            "protocol": self.job.protocol,
            "count": self.count,
            "psnr": self.mean("psnr"),
            "ssim": self.mean("ssim"),
            "rainy_psnr": self.mean("rainy_psnr"),
            "rainy_ssim": self.mean("rainy_ssim"),
            "seconds": self.seconds,
            "weights": self.job.weights,
            "folder": str(self.job.root),
        }
        if bench is not None and bench.protocol == self.job.protocol:
            out.update(paper_psnr=bench.paper_psnr, paper_ssim=bench.paper_ssim)
        out["failed"] = [{"name": name, "error": reason} for name, reason in self.failed]
        out["images"] = self.images
        return out

    def _noref_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.job.name, "protocol": NO_REFERENCE, "count": self.count}
        out.update({key: self.mean(key) for key in NOREF_KEYS})
        out.update(seconds=self.seconds, weights=self.job.weights, folder=str(self.job.root))
        out["failed"] = [{"name": name, "error": reason} for name, reason in self.failed]
        out["images"] = self.images
        return out


# The protocol of a set without ground truth, in the JSON and scores.json.
NO_REFERENCE = "no-reference"
# Per image of a set without ground truth: each metric of the rainy input, then of the restored output.
NOREF_KEYS = tuple(f"{side}{m}" for m in noref.NOREF_METRICS for side in ("rainy_", ""))


# ----------------------------------------------------------------------------------------------------------------
# Options: a YAML file and/or command-line flags


def load_options(path: str | os.PathLike) -> dict[str, Any]:
    """A test options file (``base:`` overlays allowed), every key checked and defaults filled; errors name the
    file and the key. ``datasets.NAME`` may be a folder or a mapping with ``path``."""
    data = config.load_options(path)
    datasets = data.get("datasets")
    if isinstance(datasets, dict):
        data["datasets"] = {str(k): {"path": v} if isinstance(v, str) else v for k, v in datasets.items()}
    try:
        return check_section(SCHEMA, data)
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from None


def parse_data(text: str) -> tuple[str, str]:
    """``NAME=DIR`` from ``--data``; anything else is a :class:`ConfigError` showing the expected form."""
    name, sep, folder = text.partition("=")
    if not sep or not name.strip() or not folder.strip():
        raise ConfigError(
            f"--data {text!r}: expected NAME=DIR, e.g. --data Rain200H=datasets/Rain200H/test "
            "(DIR holds input/ and target/)"
        )
    return name.strip(), folder.strip()


def plan_from_args(args: argparse.Namespace) -> tuple[list[DatasetJob], dict[str, Any]]:
    """The datasets to run and the merged settings: file values, overridden by any flag given."""
    source = load_options(args.opt) if args.opt else check_section(SCHEMA, {})
    where_file = f"{args.opt}: " if args.opt else ""
    settings = {k: v for k, v in source.items() if k != "datasets"}
    for key in FLAG_SETTINGS:
        if getattr(args, key) is not None:
            settings[key] = getattr(args, key)
    # Keyed by catalogue name, so --data DID=DIR replaces the folder of the file's DID entry (any spelling),
    # keeping its weights.
    entries: dict[str, dict[str, Any]] = {}
    given = [(name, dict(entry, origin=f"{where_file}datasets.{name}")) for name, entry in source["datasets"].items()]
    for text in args.data or []:
        name, folder = parse_data(text)
        given.append((name, {"path": folder, "origin": f"--data {text}"}))
    for name, entry in given:
        bench = benchmarks.find(name)
        key = bench.name if bench else name
        entries[key] = {**entries.get(key, {}), **entry}
    if not entries:
        raise ConfigError("no datasets to test: give -opt FILE or --data NAME=DIR (DIR holds input/ and target/)")
    jobs = []
    for name, entry in entries.items():
        bench = benchmarks.find(name)
        # --protocol on the command line wins; then the dataset's own entry, the file's, the benchmark's.
        chosen = args.protocol or entry.get("protocol") or source.get("protocol")
        # An unknown name without a protocol is an error only for a set with ground truth (see check_folders).
        protocol = resolve_protocol(chosen, [name], "--protocol", entry["origin"]) if chosen or bench else None
        weights = args.weights or entry.get("weights") or settings.get("weights")
        if not weights:
            raise ConfigError(
                f"{entry['origin']}: no weights; give --weights FILE, or weights: in the options file "
                f"(for all datasets or under datasets.{name})"
            )
        params_key = args.params_key or entry.get("params_key") or settings["params_key"]
        jobs.append(DatasetJob(name, Path(entry["path"]), protocol, weights, params_key, bench, origin=entry["origin"]))
    return jobs, settings


def check_folders(job: DatasetJob) -> None:
    """Fills ``job.pairs``; a missing or empty folder or unpaired names raise an error naming the folder.

    A folder without ``target/`` is a set without ground truth: its inputs are ``input/``, or the folder's own
    images, paired with None.
    """
    if not job.root.is_dir():
        dst = job.root.parent if job.root.name == "test" else job.root
        hint = f" (prepare it with: drsformer prepare {job.name} --src RAW --dst {dst})" if job.benchmark else ""
        raise MissingPathError(f"{job.root}: no such folder for dataset {job.name}{hint}")
    if not (job.root / "target").is_dir():
        job.pairs, job.targetless = [(path, None) for path in _targetless_inputs(job.root)], True
        return
    if job.protocol is None:
        job.protocol = resolve_protocol(None, [job.name], "--protocol", job.origin)  # raises: no protocol known
    folders = {}
    for role in ("input", "target"):
        folder = job.root / role
        if not folder.is_dir():
            raise MissingPathError(f"{folder}: no such folder; a test folder holds input/ and target/")
        files = list_images(folder)
        if not files:
            raise EvaluationError(f"{folder}: holds no images")
        folders[role] = files
    matching = match_files(folders["input"], folders["target"])
    job.pairs = list(matching.check(job.root / "input", job.root / "target"))


def _targetless_inputs(root: Path) -> list[Path]:
    folder = root / "input" if (root / "input").is_dir() else root
    files = list_images(folder)
    if files:
        return files
    if folder == root:
        raise MissingPathError(
            f"{root / 'input'}: no such folder; a test folder holds input/ and target/, or for real rain without "
            "ground truth input/ alone (or the images themselves)"
        )
    raise EvaluationError(f"{folder}: holds no images")


def noref_entry(name: str, rainy: np.ndarray, restored: np.ndarray) -> dict[str, Any]:
    """NIQE and BRISQUE of a rainy 8-bit image and of its restored version; errors name the input file."""
    try:
        scores = {f"rainy_{k}": v for k, v in noref.score(rainy).items()} | noref.score(restored)
    except EvaluationError as err:
        raise EvaluationError(f"{name}: {err}") from None
    return {"name": f"{Path(name).stem}.png", **{key: scores[key] for key in NOREF_KEYS}}


def load_models(jobs: list[DatasetJob]) -> dict[tuple[str, str | None], nn.Module]:
    """Every distinct (weights, params_key), loaded on the CPU in eval mode; errors name the file."""
    from .archs.checkpoint import load_model

    for job in jobs:  # all missing files are reported before the (slow) loading starts
        if not os.path.isfile(job.weights):
            raise MissingPathError(f"{job.weights}: no such checkpoint (weights for dataset {job.name})")
    models = {}
    for job in jobs:
        key = (job.weights, job.params_key)
        if key not in models:
            model, note = load_model(job.weights, job.params_key)
            models[key] = model.eval()
            if note:
                print(f"{job.weights}: {note}", file=sys.stderr)
    return models


# ----------------------------------------------------------------------------------------------------------------
# Running


def run_dataset(
    job: DatasetJob,
    model: nn.Module,
    out_dir: Path,
    settings: InferenceSettings,
    device: str,
    progress: bool = True,
) -> DatasetResult:
    """Restores, saves and scores every pair of ``job``; unreadable images are recorded in ``failed``."""
    result = DatasetResult(job)
    start = time.perf_counter()
    out_dir.mkdir(parents=True, exist_ok=True)
    for input_path, target_path in tqdm(job.pairs, desc=job.name, unit="img", disable=not progress):
        try:
            rainy = read_image(input_path)
            target = None if target_path is None else to_uint8(read_image(target_path))
            if target is not None and rainy.shape[:2] != target.shape[:2]:
                raise EvaluationError(
                    f"size mismatch: {input_path} is {rainy.shape[1]}x{rainy.shape[0]} but {target_path} is "
                    f"{target.shape[1]}x{target.shape[0]} (width x height)"
                )
            tensor = image_to_tensor(rainy).to(device)
            restored = tensor_to_image(restore_or_explain(model, tensor, settings, f"{job.name}/{input_path.name}"))
            write_image(out_dir / f"{input_path.stem}.png", restored)
            if target is None:  # no ground truth: the saved image stays even if it cannot be scored
                result.images.append(noref_entry(str(input_path), to_uint8(rainy), restored))
                continue
        except (ImageReadError, ImageWriteError, EvaluationError) as err:
            result.failed.append((input_path.name, str(err)))
            tqdm.write(f"skipped {input_path.name}: {err}", file=sys.stderr)
            continue
        score = evaluate_pair(restored, target, job.protocol)
        before = evaluate_pair(to_uint8(rainy), target, job.protocol)  # the rainy input: what the model gained
        result.images.append(
            {
                "name": f"{input_path.stem}.png",
                "psnr": score.psnr,
                "ssim": score.ssim,
                "rainy_psnr": before.psnr,
                "rainy_ssim": before.ssim,
            }
        )
    result.seconds = time.perf_counter() - start
    return result


def _number(value: float | None, digits: int, signed: bool = False) -> str:
    if value is None:
        return "-"
    return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"


def format_table(results: list[DatasetResult]) -> str:
    """Markdown tables, one row per dataset: PSNR/SSIM with the paper's numbers and the difference where they
    apply, then NIQE/BRISQUE of the sets without ground truth."""
    paired = [r for r in results if not r.job.targetless]
    real = [r for r in results if r.job.targetless]
    return "\n\n".join(([_paired_table(paired)] if paired else []) + ([format_noref_table(real)] if real else []))


def _images_cell(r: DatasetResult) -> str:
    return f"{r.count}" + (f" ({len(r.failed)} failed)" if r.failed else "")


def format_noref_table(results: list[DatasetResult]) -> str:
    """NIQE and BRISQUE of the rainy inputs beside those of the restored outputs, one row per dataset."""
    header = ["dataset", "images"]
    header += [f"{m.upper()} ↓ {side}" for m in noref.NOREF_METRICS for side in ("rainy", "derained")]
    header += ["seconds", "images/s"]
    rows = []
    for r in results:
        rate = r.count / r.seconds if r.seconds > 0 else None
        row = [r.job.name, _images_cell(r)] + [_number(r.mean(key), 4) for key in NOREF_KEYS]
        rows.append(row + [_number(r.seconds, 1), _number(rate, 2)])
    align = ["---"] + ["---:"] * (len(header) - 1)
    lines = ["| " + " | ".join(cells) + " |" for cells in [header, align, *rows]]
    note = "No ground truth: NIQE and BRISQUE (pyiqa's definitions); lower is better for both."
    return "\n".join([*lines, note])


def _paired_table(results: list[DatasetResult]) -> str:
    header = ["dataset", "protocol", "images", "PSNR", "SSIM", "seconds", "images/s"]
    paper = any(r.job.benchmark is not None and r.job.benchmark.protocol == r.job.protocol for r in results)
    if paper:
        header += ["paper PSNR", "paper SSIM", "ΔPSNR", "ΔSSIM"]
    rows = []
    for r in results:
        psnr, ssim = r.mean("psnr"), r.mean("ssim")
        rate = r.count / r.seconds if r.seconds > 0 else None
        row = [r.job.name, r.job.protocol, _images_cell(r), _number(psnr, 2), _number(ssim, 4)]
        row += [_number(r.seconds, 1), _number(rate, 2)]
        if paper:
            bench = r.job.benchmark
            if bench is not None and bench.protocol == r.job.protocol:
                dp = None if psnr is None else psnr - bench.paper_psnr
                ds = None if ssim is None else ssim - bench.paper_ssim
                row += [
                    f"{bench.paper_psnr:.2f}",
                    f"{bench.paper_ssim:.4f}",
                    _number(dp, 2, True),
                    _number(ds, 4, True),
                ]
            else:
                row += ["-"] * 4
        rows.append(row)
    align = ["---", "---"] + ["---:"] * (len(header) - 2)
    lines = [header, align, *rows]
    return "\n".join("| " + " | ".join(cells) + " |" for cells in lines)


def report_dict(results: list[DatasetResult], weights: str | None, settings: InferenceSettings, device: str) -> dict:
    """The ``--json`` report: settings, then per dataset the means, timings and per-image scores."""
    return {
        "weights": weights,
        "device": device,
        "precision": settings.precision,
        "tile": settings.tile,
        "self_ensemble": settings.self_ensemble,
        "datasets": [r.to_dict() for r in results],
    }


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-opt", "--opt", metavar="FILE", help="test options file (options/test/*.yml)")
    parser.add_argument("--weights", help="checkpoint for every dataset (overrides the options file)")
    parser.add_argument(
        "--params-key",
        default=None,
        help="weights inside the checkpoint: params or params_ema (default: the ones a training run validated, "
        "params_ema with EMA, else params)",
    )
    parser.add_argument(
        "--data",
        action="append",
        metavar="NAME=DIR",
        help="a test set: DIR holds input/ and target/, NAME picks the protocol; without target/ (real rain) its "
        "input/ or its images are scored with NIQE/BRISQUE (repeatable)",
    )
    parser.add_argument(
        "--protocol",
        choices=PROTOCOLS,
        default=None,
        help="score every set with this protocol (default: the paper's for each benchmark; "
        "skimage: skimage.metrics on float Y, as many Python-only papers report)",
    )
    parser.add_argument("--out", default=None, help="folder for the restored images, one subfolder per set (results)")
    parser.add_argument("--json", metavar="FILE", default=None, help="write per-image and mean scores as JSON")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--precision", choices=list(PRECISIONS), default=None, help="autocast precision (fp32)")
    parser.add_argument(
        "--tile",
        type=int,
        default=None,
        help="tile size in pixels (default: whole images); tiles are exact, so the scores do not change",
    )
    parser.add_argument(
        "--self-ensemble", action="store_true", default=None, help="average the 8 flips and rotations (8x slower)"
    )
    parser.add_argument(
        "--report",
        action="store_true",
        default=None,
        help="also write <out>/<NAME>/report.html: one page per set, every image as rainy | derained | ground "
        "truth with its scores, worst first (thumbnails in <out>/<NAME>/thumbs/)",
    )
    parser.add_argument(
        "--compare-to",
        metavar="DIR",
        default=None,
        help="the --out folder of another test run: the report adds its derained image and the per-image "
        f"difference, worst first (implies --report). Scores come from DIR/<NAME>/{report.SCORES_FILE}, which "
        "every run writes, when it used the same protocol; otherwise DIR/<NAME>/<stem>.png are scored",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    prefer_huge_pages()
    jobs, options = plan_from_args(args)
    device = str(resolve_device(options.get("device"), "device"))
    settings = InferenceSettings(options["precision"], options["tile"] or None, options["self_ensemble"]).check()
    for job in jobs:  # every folder and pairing first, then every checkpoint: fail before any image runs
        check_folders(job)
    out_root = Path(options["out"])
    compare_to = Path(options["compare_to"]) if options.get("compare_to") else None
    if compare_to is not None:
        report.check_other_run(compare_to, out_root, [job.name for job in jobs])
    models = load_models(jobs)
    print(f"device {device}, {settings.describe()}; results in {out_root}/", file=sys.stderr)
    results = []
    for job in jobs:
        model = models[(job.weights, job.params_key)].to(device)
        variant = "with MEFC" if getattr(model, "has_mefc", True) else "without MEFC"
        what = (
            f"{len(job.pairs)} images in {job.root} (no target/: NIQE and BRISQUE of input and output)"
            if job.targetless
            else f"{len(job.pairs)} pairs in {job.root}, {job.protocol} protocol"
        )
        print(f"{job.name}: {what}, weights {job.weights} ({variant})", file=sys.stderr)
        results.append(run_dataset(job, model, out_root / job.name, settings, device, not args.quiet))
        model.to("cpu")  # free the GPU for the next set's weights
        entry = results[-1].to_dict()
        report.write_scores(out_root / job.name, entry)  # what a later --compare-to reads
        if options["report"] or compare_to is not None:
            page = report.report_dataset(entry, job.pairs, out_root / job.name, compare_to, not args.quiet)
            print(f"{job.name}: report {page}", file=sys.stderr)
    print(format_table(results))
    failed = sum(len(r.failed) for r in results)
    if options.get("json"):
        path = Path(options["json"])
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(report_dict(results, options.get("weights"), settings, device), indent=2))
        print(f"wrote {path}")
    if failed:
        names = [f"{r.job.name}/{name}" for r in results for name, _ in r.failed]
        print(f"drsformer test: {failed} image(s) could not be processed: {name_list(names)}", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    from .cli import module_main

    return module_main("test", argv)


if __name__ == "__main__":
    sys.exit(main())
