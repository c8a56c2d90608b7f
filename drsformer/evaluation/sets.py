"""A test set's folders: checked, and its files paired, before any image runs."""

from __future__ import annotations

from pathlib import Path

from .. import benchmarks
from ..config.testing import TestSet
from ..data.io import list_images, match_files
from ..errors import EvaluationError, MissingPathError


def check_folders(test_set: TestSet) -> None:
    """Fills ``test_set.pairs``; a missing or empty folder or unpaired names raise an error naming the folder.

    A folder without ``target/`` is a set without ground truth: its inputs are ``input/``, or the folder's own
    images, paired with None.
    """
    root = test_set.root
    if not root.is_dir():
        dst = root.parent if root.name == "test" else root
        hint = (
            f" (prepare it with: drsformer prepare {test_set.name} --src RAW --dst {dst})" if test_set.benchmark else ""
        )
        raise MissingPathError(f"{root}: no such folder for dataset {test_set.name}{hint}")
    if not (root / "target").is_dir():
        test_set.pairs, test_set.targetless = [(path, None) for path in _targetless_inputs(root)], True
        return
    if test_set.protocol is None:  # raises: the name gives no protocol
        test_set.protocol = benchmarks.resolve_protocol(None, [test_set.name], "--protocol", test_set.origin)
    folders = {}
    for role in ("input", "target"):
        folder = root / role
        if not folder.is_dir():
            raise MissingPathError(f"{folder}: no such folder; a test folder holds input/ and target/")
        files = list_images(folder)
        if not files:
            raise EvaluationError(f"{folder}: holds no images")
        folders[role] = files
    matching = match_files(folders["input"], folders["target"])
    test_set.pairs = list(matching.check(root / "input", root / "target"))


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
