"""The tables ``drsformer test`` prints (Markdown: sets as rows, the paper's numbers beside ours) and its JSON."""

from __future__ import annotations

from typing import Any

from .. import benchmarks
from ..inference import InferenceSettings
from ..metrics import noref
from .scores import NOREF_KEYS, SetScores


def _number(value: float | None, digits: int, signed: bool = False) -> str:
    if value is None:
        return "-"
    return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"


def _images_cell(r: SetScores) -> str:
    return f"{r.count}" + (f" ({len(r.failed)} failed)" if r.failed else "")


def _markdown(header: list[str], align: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(cells) + " |" for cells in [header, align, *rows]]


def format_table(results: list[SetScores]) -> str:
    """Markdown tables, one row per set: PSNR/SSIM with the paper's numbers and the difference where they apply,
    then NIQE/BRISQUE of the sets without ground truth."""
    paired = [r for r in results if not r.targetless]
    real = [r for r in results if r.targetless]
    return "\n\n".join(([paired_table(paired)] if paired else []) + ([noref_table(real)] if real else []))


def noref_table(results: list[SetScores]) -> str:
    """NIQE and BRISQUE of the rainy inputs beside those of the restored outputs, one row per set."""
    header = ["dataset", "images"]
    header += [f"{m.upper()} ↓ {side}" for m in noref.NOREF_METRICS for side in ("rainy", "derained")]
    header += ["seconds", "images/s"]
    rows = []
    for r in results:
        rate = r.count / r.seconds if r.seconds > 0 else None
        row = [r.name, _images_cell(r)] + [_number(r.mean(key), 4) for key in NOREF_KEYS]
        rows.append(row + [_number(r.seconds, 1), _number(rate, 2)])
    lines = _markdown(header, ["---"] + ["---:"] * (len(header) - 1), rows)
    return "\n".join([*lines, "No ground truth: NIQE and BRISQUE (pyiqa's definitions); lower is better for both."])


def paired_table(results: list[SetScores]) -> str:
    """PSNR/SSIM per set, its time, and the paper's numbers with the difference for a benchmark scored with the
    paper's protocol."""
    header = ["dataset", "protocol", "images", "PSNR", "SSIM", "seconds", "images/s"]
    paper = any("paper_psnr" in r.info for r in results)
    if paper:
        header += ["paper PSNR", "paper SSIM", "ΔPSNR", "ΔSSIM"]
    rows = []
    for r in results:
        psnr, ssim = r.mean("psnr"), r.mean("ssim")
        rate = r.count / r.seconds if r.seconds > 0 else None
        row = [r.name, r.protocol, _images_cell(r), _number(psnr, 2), _number(ssim, 4)]
        row += [_number(r.seconds, 1), _number(rate, 2)]
        if paper:
            if "paper_psnr" in r.info:
                paper_psnr, paper_ssim = r.info["paper_psnr"], r.info["paper_ssim"]
                dp = None if psnr is None else psnr - paper_psnr
                ds = None if ssim is None else ssim - paper_ssim
                row += [f"{paper_psnr:.2f}", f"{paper_ssim:.4f}", _number(dp, 2, True), _number(ds, 4, True)]
            else:
                row += ["-"] * 4
        rows.append(row)
    return "\n".join(_markdown(header, ["---", "---"] + ["---:"] * (len(header) - 2), rows))


def models_table(results: list[SetScores]) -> str:
    """Several models on the same sets (a test file's ``models``): one row per model, one column per set with its
    PSNR / SSIM, then the paper's rows for the sets it reports (DRSformer's Table 1, and the baselines it quotes)."""
    models = list(dict.fromkeys(r.info["model"] for r in results))
    sets = list(dict.fromkeys(r.name for r in results))
    cell = {(r.info["model"], r.name): r for r in results}
    header = ["model", *(f"{name} PSNR / SSIM" for name in sets)]
    rows = []
    for model in models:
        row = [model]
        for name in sets:
            r = cell.get((model, name))
            row.append("-" if r is None else f"{_number(r.mean('psnr'), 2)} / {_number(r.mean('ssim'), 4)}")
        rows.append(row)
    protocols = {r.name: r.protocol for r in results}
    for paper, numbers in benchmarks.paper_rows().items():
        row = [f"{paper} (paper)"]
        for name in sets:
            bench = benchmarks.find(name)
            value = numbers.get(bench.name) if bench is not None and bench.protocol == protocols[name] else None
            row.append("-" if value is None else f"{value[0]:.2f} / {_number(value[1], 4)}")
        if any(cell != "-" for cell in row[1:]):
            rows.append(row)
    return "\n".join(_markdown(header, ["---"] + ["---:"] * len(sets), rows))


def report_dict(results: list[SetScores], weights: str | None, settings: InferenceSettings, device: str) -> dict:
    """The ``--json`` report: settings, then per set the means, timings and per-image scores."""
    out: dict[str, Any] = {
        "weights": weights,
        "device": device,
        "precision": settings.precision,
        "tile": settings.tile,
        "self_ensemble": settings.self_ensemble,
    }
    out["datasets"] = [r.to_dict() for r in results]
    return out
