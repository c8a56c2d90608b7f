"""``drsformer test --report``: one self-contained HTML page per test set, worst images first.

The page is built from what ``drsformer test`` already has (the dataset's JSON entry, its input/target pairs,
the folder of restored images); nothing here runs a model. See :func:`write_report` for the page and
:mod:`drsformer.evaluation.report.other_run` for ``--compare-to``.
"""

from .build import PAGE, THUMBS, report_dataset, write_report
from .model import METRICS, RAINY_PREFIX, Metric
from .other_run import SCORES_FILE, OtherRun, check_other_run, load_other_run, read_scores, write_scores

__all__ = [
    "METRICS",
    "PAGE",
    "RAINY_PREFIX",
    "SCORES_FILE",
    "THUMBS",
    "Metric",
    "OtherRun",
    "check_other_run",
    "load_other_run",
    "read_scores",
    "report_dataset",
    "write_report",
    "write_scores",
]
