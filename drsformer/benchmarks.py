"""The one catalogue of deraining benchmarks (names, aliases, scoring protocol, the paper's model and numbers), and
the one rule that says which protocol scores a set.

``drsformer prepare``, ``evaluate``, ``test`` and the training options all read this module; nothing else
knows a benchmark by name.

**Which protocol scores a set** (:func:`resolve_protocol`), in validation, ``test`` and ``evaluate`` alike: the
protocol given explicitly (``val.protocol``, a test file's or ``--data`` set's ``protocol``, ``--protocol``);
else the paper's protocol for the benchmark the set's name (or, in training, its folder) names; else the set
cannot be scored, and the error says which option to give. A number is never scored with a protocol nobody chose.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from .errors import ConfigError
from .registry import suggest

# The scoring protocols (see drsformer.metrics): the two MATLAB scripts the paper used (each benchmark names one of
# them), and ``skimage``, the number many Python-only papers report. Every list of protocols in the package is this.
PAPER_PROTOCOLS = ("restormer", "rcdnet")
PROTOCOLS = (*PAPER_PROTOCOLS, "skimage")


@dataclass(frozen=True)
class Benchmark:
    """One benchmark as the DRSformer paper (CVPR 2023, Table 1) uses it."""

    name: str  # canonical name: the prepared folder datasets/<name> and the option file names
    title: str  # as the paper writes it
    aliases: tuple[str, ...]  # other accepted spellings, compared after lower-casing and dropping - _ . and spaces
    protocol: str  # restormer | rcdnet
    mefc: bool  # the paper's model for it: with MEFC (drsformer) or without (drsformer_no_mefc)
    paper_psnr: float
    paper_ssim: float
    train_pairs: int  # published split sizes
    test_pairs: int
    layout: str  # the release layout, for messages and docs
    # Where the release keeps each split: folder names that ``drsformer prepare`` compares with whole path
    # components (case-insensitively). SPA-Data's training split is a list file, named here instead.
    train_dirs: tuple[str, ...] = ()
    test_dirs: tuple[str, ...] = ()

    @property
    def variant(self) -> str:
        """The registered architecture factory the paper used: ``drsformer`` or ``drsformer_no_mefc``."""
        return "drsformer" if self.mefc else "drsformer_no_mefc"

    @property
    def checkpoint(self) -> str:
        """Where the option files expect the authors' published weights for this benchmark."""
        return f"pretrained/{self.name}.pth"

    @property
    def expected_pairs(self) -> dict[str, int]:
        return {"train": self.train_pairs, "test": self.test_pairs}


BENCHMARKS: dict[str, Benchmark] = {
    b.name: b
    for b in (
        Benchmark(
            "Rain200L",
            "Rain200L",
            ("rain200light",),
            "restormer",
            mefc=False,
            paper_psnr=41.23,
            paper_ssim=0.9894,
            train_pairs=1800,
            test_pairs=200,
            layout="folders holding rain/X2/norain-{i}x2.png and norain/norain-{i}.png, one for training and one "
            "for testing (rain_data_train_Light, rain_data_test_Light)",
            train_dirs=("rain_data_train_Light", "train", "training"),
            test_dirs=("rain_data_test_Light", "test", "testing"),
        ),
        Benchmark(
            "Rain200H",
            "Rain200H",
            ("rain200heavy",),
            "restormer",
            mefc=True,
            paper_psnr=32.17,
            paper_ssim=0.9326,
            train_pairs=1800,
            test_pairs=200,
            layout="folders holding rain/X2/norain-{i}x2.png and norain/norain-{i}.png, one for training and one "
            "for testing (rain_data_train_Heavy, rain_data_test_Heavy)",
            train_dirs=("rain_data_train_Heavy", "train", "training"),
            test_dirs=("rain_data_test_Heavy", "test", "testing"),
        ),
        Benchmark(
            "DID",
            "DID-Data",
            ("diddata", "didmdn", "rain1200"),
            "rcdnet",
            mefc=True,
            paper_psnr=35.35,
            paper_ssim=0.9646,
            train_pairs=12000,
            test_pairs=1200,
            layout="Rain_Heavy/, Rain_Medium/, Rain_Light/ (each with train2018new/{i}.jpg) and a test folder such "
            "as DID-MDN-test/{i}.jpg, every image rainy left half | clean right half",
            train_dirs=("Rain_Heavy", "Rain_Medium", "Rain_Light"),
            test_dirs=("DID-MDN-test", "Test1200", "test", "testing"),
        ),
        Benchmark(
            "DDN",
            "DDN-Data",
            ("ddndata", "rain1400", "rain12600", "rain14000"),
            "rcdnet",
            mefc=True,
            paper_psnr=34.35,
            paper_ssim=0.9588,
            train_pairs=12600,
            test_pairs=1400,
            layout="a training and a testing folder (e.g. Rain12600, Rain1400) each holding rain/{i}_{j}.jpg and "
            "norain/{i}.jpg (or rainy_image/ and ground_truth/)",
            train_dirs=("Rain12600", "training", "train"),
            test_dirs=("Rain1400", "testing", "test"),
        ),
        Benchmark(
            "SPA",
            "SPA-Data",
            ("spadata", "spanet", "realrain"),
            "restormer",
            mefc=False,
            paper_psnr=48.54,
            paper_ssim=0.9924,
            train_pairs=638492,
            test_pairs=1000,
            layout="real_world.txt (rainy and clean path per line) for training and real_test_1000/rain/{k}.png + "
            "real_test_1000/gt/{k}gt.png for testing",
            train_dirs=("real_world.txt",),
            test_dirs=("real_test_1000", "testing", "test"),
        ),
    )
}


# Baselines of the paper's Table 1 whose numbers this package records: (PSNR, SSIM or None), by benchmark.
# Restormer's Rain200H PSNR is the one the DRSformer paper compares against in its text (32.00 against 32.17).
PAPER_BASELINES: dict[str, dict[str, tuple[float, float | None]]] = {"Restormer": {"Rain200H": (32.00, None)}}


def paper_rows() -> dict[str, dict[str, tuple[float, float | None]]]:
    """The paper's numbers by model and benchmark: DRSformer's (the catalogue's) and the recorded baselines'."""
    drsformer: dict[str, tuple[float, float | None]] = {
        b.name: (b.paper_psnr, b.paper_ssim) for b in BENCHMARKS.values()
    }
    return {"DRSformer": drsformer, **PAPER_BASELINES}


def _squash(name: str) -> str:
    return re.sub(r"[\s_\-.]", "", name.lower())


_LOOKUP = {
    key: b.name for b in BENCHMARKS.values() for key in (_squash(b.name), _squash(b.title), *map(_squash, b.aliases))
}


def find(name: str) -> Benchmark | None:
    """The benchmark ``name`` means (any accepted spelling, case-insensitive), or None."""
    canonical = _LOOKUP.get(_squash(name))
    return BENCHMARKS[canonical] if canonical else None


def get(name: str, what: str = "dataset") -> Benchmark:
    """Like :func:`find`, but an unknown name is a :class:`ConfigError` that lists the benchmarks."""
    found = find(name)
    if found is None:
        raise ConfigError(f"unknown {what} {name!r}; known benchmarks: {choices()} (case-insensitive)")
    return found


def choices() -> str:
    """``Rain200L, Rain200H, DID (DID-Data), ...`` for messages and help texts."""
    return ", ".join(b.name if b.title == b.name else f"{b.name} ({b.title})" for b in BENCHMARKS.values())


def check_protocol(name: str, key: str = "--protocol") -> str:
    """``name`` when it is a scoring protocol; else a :class:`ConfigError` naming ``key``."""
    if name not in PROTOCOLS:
        raise ConfigError(
            f"{key}: unknown protocol {name!r}{suggest(name, PROTOCOLS)}; choose from {', '.join(PROTOCOLS)}"
        )
    return name


def resolve_protocol(chosen: str | None, names: Sequence[str], key: str, where: str) -> str:
    """The protocol that scores a set (the rule in this module's description): ``chosen`` (checked), else the
    paper's for the first of ``names`` that names a benchmark; else a :class:`ConfigError`. Errors start with
    ``where`` (where the set or its protocol was named) and say to give ``key`` (the option)."""
    if chosen is not None:
        return check_protocol(chosen, where)
    for name in names:
        bench = find(name)
        if bench is not None:
            return bench.protocol
    prefix = f"{where}: " if where else ""
    if not names:
        raise ConfigError(f"{prefix}no protocol: give {key} {'|'.join(PROTOCOLS)}, or name the benchmark ({choices()})")
    raise ConfigError(
        f"{prefix}unknown dataset name {names[0]!r}, so its protocol is unknown; use a benchmark name "
        f"({choices()}) or give {key} {'|'.join(PROTOCOLS)}"
    )
