"""drsformer prepare: small fake releases of the five benchmarks, converted and checked file by file."""

from __future__ import annotations

import argparse
import errno
import json
import os
from pathlib import Path

import numpy as np
import pytest

from drsformer.cli import main
from drsformer.commands import prepare as prepare_command
from drsformer.data.io import read_image, write_image
from drsformer.data.prepare import PrepareError, prepare_dataset

H, W = 8, 12


def image(path: Path, color: tuple[int, int, int], height: int = H, width: int = W) -> Path:
    write_image(path, np.full((height, width, 3), color, dtype=np.uint8))
    return path


def rainy_color(i: int) -> tuple[int, int, int]:
    return (10 * i, 200, 0)


def clean_color(i: int) -> tuple[int, int, int]:
    return (0, 10 * i, 200)


def same_file(a: Path, b: Path) -> bool:
    return os.stat(a).st_ino == os.stat(b).st_ino and os.stat(a).st_dev == os.stat(b).st_dev


def snapshot(root: Path) -> dict[str, tuple[bytes, int]]:
    """Every file under root with its bytes and modification time, to show the source is left untouched."""
    return {
        p.relative_to(root).as_posix(): (p.read_bytes(), p.stat().st_mtime_ns) for p in root.rglob("*") if p.is_file()
    }


def rain200_release(root: Path, kind: str = "Heavy", train: int = 3, test: int = 2) -> Path:
    """rain_data_{train,test}_{kind}/rain/X2/norain-{i}x2.png and norain/norain-{i}.png."""
    for split, count in (("train", train), ("test", test)):
        folder = root / f"rain_data_{split}_{kind}"
        for i in range(1, count + 1):
            image(folder / "rain" / "X2" / f"norain-{i}x2.png", rainy_color(i))
            image(folder / "norain" / f"norain-{i}.png", clean_color(i))
    return root


# ---------------------------------------------------------------------------------------------------------------
# Rain200L / Rain200H


def test_rain200h_hard_links_pairs_by_number(tmp_path: Path) -> None:
    src = rain200_release(tmp_path / "raw")
    rain200_release(tmp_path / "raw", kind="Light", train=5, test=4)  # the other variant beside it is ignored
    before = snapshot(src)
    report = prepare_dataset("rain200h", src, tmp_path / "out", progress=False)

    assert sorted(os.listdir(tmp_path / "out/train/input")) == ["1.png", "2.png", "3.png"]
    assert sorted(os.listdir(tmp_path / "out/train/target")) == ["1.png", "2.png", "3.png"]
    assert sorted(os.listdir(tmp_path / "out/test/input")) == ["1.png", "2.png"]
    for i in (1, 2, 3):
        heavy = src / "rain_data_train_Heavy"
        assert same_file(tmp_path / f"out/train/input/{i}.png", heavy / f"rain/X2/norain-{i}x2.png")
        assert same_file(tmp_path / f"out/train/target/{i}.png", heavy / f"norain/norain-{i}.png")
        assert tuple(read_image(tmp_path / f"out/train/target/{i}.png")[0, 0]) == clean_color(i)
    assert snapshot(src) == before

    assert report.dataset == "Rain200H"
    train, test = report.splits["train"], report.splits["test"]
    assert (train.written, train.expected, train.missing) == (3, 1800, 0)
    assert (test.written, test.expected) == (2, 200)
    assert not report.ok  # 3 of 1800: reported, not an error
    assert report.placed == {"hard links": 10}
    text = report.format()
    assert "Rain200H  train        3      1800        0  CHECK" in text
    assert "3 pairs written, the published split has 1800" in text


def test_rain200l_expected_override_and_plain_rain_folder(tmp_path: Path) -> None:
    # Some copies keep the rainy images directly in rain/ (no X2 level); both are accepted.
    src = tmp_path / "Rain200L"
    for split in ("train", "test"):
        image(src / split / "rain" / "norain-7x2.png", rainy_color(7))
        image(src / split / "norain" / "norain-7.png", clean_color(7))
    report = prepare_dataset("Rain200L", src, tmp_path / "out", progress=False, expected={"train": 1, "test": 1})
    assert report.ok, report.format()
    assert same_file(tmp_path / "out/test/input/7.png", src / "test/rain/norain-7x2.png")
    assert json.loads(json.dumps(report.to_dict()))["splits"]["train"]["written"] == 1


def test_missing_counterparts_are_reported_by_name(tmp_path: Path) -> None:
    src = rain200_release(tmp_path / "raw", train=4)
    (src / "rain_data_train_Heavy/norain/norain-2.png").unlink()  # rainy 2 loses its clean image
    (src / "rain_data_train_Heavy/rain/X2/norain-4x2.png").unlink()  # clean 4 loses its rainy image
    image(src / "rain_data_train_Heavy/norain/notes.png", (0, 0, 0))  # a name outside the layout
    image(src / "rain_data_train_Heavy/rain/X2/rain-1.png", (0, 0, 0))  # a second rainy image numbered 1
    report = prepare_dataset("Rain200H", src, tmp_path / "out", progress=False)

    train = report.splits["train"]
    assert train.written == 2
    assert train.missing_target == ["rain_data_train_Heavy/rain/X2/norain-2x2.png"]
    assert train.missing_input == ["rain_data_train_Heavy/norain/norain-4.png"]
    assert train.skipped == [
        "rain_data_train_Heavy/norain/notes.png",
        "rain_data_train_Heavy/rain/X2/rain-1.png (same pairing key as norain-1x2.png, which was used)",
    ]
    assert same_file(tmp_path / "out/train/input/1.png", src / "rain_data_train_Heavy/rain/X2/norain-1x2.png")
    assert train.missing == 2
    assert sorted(os.listdir(tmp_path / "out/train/input")) == ["1.png", "3.png"]
    text = report.format()
    assert "1 rainy image(s) without a clean image: rain_data_train_Heavy/rain/X2/norain-2x2.png" in text
    assert "1 clean image(s) without a rainy image: rain_data_train_Heavy/norain/norain-4.png" in text
    assert report.to_dict()["splits"]["train"]["missing_target"] == {
        "count": 1,
        "first": ["rain_data_train_Heavy/rain/X2/norain-2x2.png"],
    }


# ---------------------------------------------------------------------------------------------------------------
# Link modes and the destination


def test_copy_gives_independent_files(tmp_path: Path) -> None:
    src = rain200_release(tmp_path / "raw", train=1, test=1)
    before = snapshot(src)
    report = prepare_dataset("Rain200H", src, tmp_path / "out", copy=True, progress=False)
    copied, original = tmp_path / "out/train/input/1.png", src / "rain_data_train_Heavy/rain/X2/norain-1x2.png"
    assert not same_file(copied, original) and not copied.is_symlink()
    assert copied.read_bytes() == original.read_bytes()
    image(copied, (1, 2, 3))  # changing the copy leaves the source alone
    assert snapshot(src) == before
    assert report.placed == {"copied": 4}


def test_symbolic_links_when_hard_links_fail(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def cross_device(source: object, target: object) -> None:
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    monkeypatch.setattr(os, "link", cross_device)
    src = rain200_release(tmp_path / "raw", train=2, test=1)
    report = prepare_dataset("Rain200H", src, tmp_path / "out", progress=False)
    link = tmp_path / "out/train/target/2.png"
    assert link.is_symlink() and os.path.isabs(os.readlink(link))
    assert same_file(link, src / "rain_data_train_Heavy/norain/norain-2.png")
    assert report.placed == {"symbolic links": 6}
    assert "hard links failed (Invalid cross-device link)" in report.format()


def test_refuses_a_non_empty_destination_unless_overwrite(tmp_path: Path) -> None:
    src = rain200_release(tmp_path / "raw", train=2, test=1)
    prepare_dataset("Rain200H", src, tmp_path / "out", progress=False)
    with pytest.raises(PrepareError, match=r"out/train/input: already holds 2 entries; pass --overwrite"):
        prepare_dataset("Rain200H", src, tmp_path / "out", progress=False)

    image(tmp_path / "out/train/input/old.png", (9, 9, 9))  # left from an earlier run
    image(src / "rain_data_train_Heavy/norain/norain-1.png", (5, 5, 5))  # a new clean image in the release
    report = prepare_dataset("Rain200H", src, tmp_path / "out", progress=False, overwrite=True)
    assert tuple(read_image(tmp_path / "out/train/target/1.png")[0, 0]) == (5, 5, 5)
    assert same_file(tmp_path / "out/train/target/1.png", src / "rain_data_train_Heavy/norain/norain-1.png")
    assert report.splits["train"].stale == ["old.png"]
    # Entries are made under a temporary name and renamed; re-linking the same file must not leave it behind.
    assert [n for side in ("input", "target") for n in os.listdir(tmp_path / f"out/train/{side}") if n[0] == "."] == []
    assert "1 older entr(ies) in the destination left in place: old.png" in report.format()


# ---------------------------------------------------------------------------------------------------------------
# DID-Data


def side_by_side(path: Path, left: tuple[int, int, int], right: tuple[int, int, int], width: int = 32) -> None:
    pair = np.zeros((16, width, 3), dtype=np.uint8)
    pair[:, : width // 2] = left
    pair[:, width // 2 :] = right
    write_image(path, pair)


def test_did_cuts_left_rainy_and_right_clean_halves(tmp_path: Path) -> None:
    src = tmp_path / "DID-MDN-datasets"
    train = src / "DID-MDN-training"
    side_by_side(train / "Rain_Heavy/train2018new/1.jpg", (220, 40, 40), (40, 40, 220))
    side_by_side(train / "Rain_Heavy/train2018new/2.jpg", (40, 220, 40), (220, 220, 40))
    side_by_side(train / "Rain_Medium/train2018new/1.jpg", (200, 200, 200), (20, 20, 20))
    side_by_side(train / "Rain_Light/train2018new/1.png", (1, 2, 3), (4, 5, 6), width=33)  # odd width
    (train / "Rain_Light/train2018new/2.jpg").write_bytes(b"\xff\xd8 truncated jpeg")
    side_by_side(src / "DID-MDN-test/1.jpg", (220, 40, 40), (40, 40, 220))
    before = snapshot(src)
    report = prepare_dataset("DID-Data", src, tmp_path / "out", progress=False)

    out = tmp_path / "out"
    names = ["heavy_1.png", "heavy_2.png", "light_1.png", "medium_1.png"]
    assert sorted(os.listdir(out / "train/input")) == sorted(os.listdir(out / "train/target")) == names
    for folder, color in (("input", (220, 40, 40)), ("target", (40, 40, 220))):
        half = read_image(out / "train" / folder / "heavy_1.png")
        assert half.shape == (16, 16, 3)
        inner = half[:, 2:-2].astype(int)  # JPEG blurs colour across the cut; away from it the colour holds
        assert np.abs(inner - color).max() <= 8
    assert np.array_equal(read_image(out / "train/input/light_1.png"), np.full((16, 16, 3), (1, 2, 3), np.uint8))
    assert np.array_equal(read_image(out / "train/target/light_1.png"), np.full((16, 16, 3), (4, 5, 6), np.uint8))
    assert os.listdir(out / "test/input") == ["1.png"]
    assert snapshot(src) == before

    assert report.splits["train"].written == 4 and report.splits["train"].expected == 12000
    assert report.splits["train"].unreadable == ["DID-MDN-training/Rain_Light/train2018new/2.jpg"]
    assert report.splits["test"].written == 1 and report.splits["test"].source == "DID-MDN-test"
    assert report.placed == {"PNG halves": 10}
    assert "1 unreadable image(s), not written: DID-MDN-training/Rain_Light/train2018new/2.jpg" in report.format()


# ---------------------------------------------------------------------------------------------------------------
# DDN-Data


@pytest.mark.parametrize(
    "train_dir, test_dir, rainy, clean",
    [
        ("DDN-Data/Rain12600", "DDN-Data/Rain1400", "rain", "norain"),
        ("rainy_image_dataset/training", "rainy_image_dataset/testing", "rainy_image", "ground_truth"),
    ],
)
def test_ddn_fourteen_rainy_images_share_one_clean_image(
    tmp_path: Path, train_dir: str, test_dir: str, rainy: str, clean: str
) -> None:
    src = tmp_path / "raw"
    for folder, ids in ((train_dir, (1, 2)), (test_dir, (3,))):
        for i in ids:
            image(src / folder / clean / f"{i}.jpg", clean_color(i))
            for j in range(1, 15):
                image(src / folder / rainy / f"{i}_{j}.jpg", rainy_color(j))
    report = prepare_dataset("DDN-Data", src, tmp_path / "out", progress=False)

    out = tmp_path / "out"
    assert len(os.listdir(out / "train/input")) == 28 and len(os.listdir(out / "test/input")) == 14
    assert sorted(os.listdir(out / "train/input")) == sorted(os.listdir(out / "train/target"))
    for i, j in ((1, 1), (1, 14), (2, 7)):
        assert same_file(out / f"train/target/{i}_{j}.jpg", src / train_dir / clean / f"{i}.jpg")
        assert same_file(out / f"train/input/{i}_{j}.jpg", src / train_dir / rainy / f"{i}_{j}.jpg")
    assert same_file(out / "test/target/3_9.jpg", src / test_dir / clean / "3.jpg")
    assert (report.splits["train"].written, report.splits["train"].expected) == (28, 12600)
    assert (report.splits["test"].written, report.splits["test"].expected) == (14, 1400)


# ---------------------------------------------------------------------------------------------------------------
# SPA-Data


def test_spa_list_file_and_test_folder(tmp_path: Path) -> None:
    src = tmp_path / "SPA"
    training = src / "Training"
    lines = []
    for n, prefix in ((1, "/"), (2, "./"), (3, "")):  # the list's paths may start with /, ./ or nothing
        image(training / f"real_world/000/000-{n}/000-{n}_1_1.png", rainy_color(n))
        if n != 3:  # the clean patch of the third line is absent
            image(training / f"real_world_gt/000/000-{n}_1_1.png", clean_color(n))
        lines.append(f"{prefix}real_world/000/000-{n}/000-{n}_1_1.png {prefix}real_world_gt/000/000-{n}_1_1.png")
    (training / "real_world.txt").write_text("\n".join(lines) + "\n")
    test = src / "Testing/real_test_1000/real_test_1000"
    for k in ("000", "001"):
        image(test / "rain" / f"{k}.png", rainy_color(int(k) + 1))
        image(test / "gt" / f"{k}gt.png", clean_color(int(k) + 1))
    before = snapshot(src)
    report = prepare_dataset("SPA-Data", src, tmp_path / "out", progress=False)

    out = tmp_path / "out"
    assert sorted(os.listdir(out / "train/input")) == ["000-1_1_1.png", "000-2_1_1.png"]
    assert sorted(os.listdir(out / "train/target")) == ["000-1_1_1.png", "000-2_1_1.png"]
    assert same_file(out / "train/target/000-2_1_1.png", training / "real_world_gt/000/000-2_1_1.png")
    assert same_file(out / "train/input/000-1_1_1.png", training / "real_world/000/000-1/000-1_1_1.png")
    assert same_file(out / "test/target/001.png", test / "gt/001gt.png")
    assert same_file(out / "test/input/000.png", test / "rain/000.png")
    assert snapshot(src) == before

    train = report.splits["train"]
    assert (train.written, train.expected, train.source) == (2, 638492, "Training/real_world.txt")
    assert train.missing_target == ["Training/real_world/000/000-3/000-3_1_1.png"]
    assert (report.splits["test"].written, report.splits["test"].expected) == (2, 1000)


def test_spa_already_paired_folders(tmp_path: Path) -> None:
    src = tmp_path / "SPA-Data"
    for split, names in (("train", ("a.png", "b.png")), ("test", ("c.png",))):
        for i, name in enumerate(names):
            image(src / split / "input" / name, rainy_color(i))
            image(src / split / "target" / name, clean_color(i))
    dst = src / "prepared"  # inside the source: it must not be taken for a second set of paired folders
    for overwrite in (False, True):
        report = prepare_dataset("spa", src, dst, progress=False, overwrite=overwrite, expected={"train": 2, "test": 1})
        assert report.ok, report.format()
    assert same_file(dst / "train/target/b.png", src / "train/target/b.png")
    assert same_file(dst / "test/input/c.png", src / "test/input/c.png")
    assert report.splits["train"].source == "train/input + train/target"


# ---------------------------------------------------------------------------------------------------------------
# Errors


def test_unrecognised_layout_names_the_folder_and_what_was_expected(tmp_path: Path) -> None:
    image(tmp_path / "raw/photos/1.png", (0, 0, 0))
    with pytest.raises(PrepareError) as caught:
        prepare_dataset("DDN", tmp_path / "raw", tmp_path / "out", progress=False)
    message = str(caught.value)
    assert "\n" not in message
    assert f"{tmp_path / 'raw'}: no DDN-Data layout found" in message
    assert "rain/{i}_{j}.jpg" in message and "train/input + train/target" in message
    assert "--train-dir / --test-dir" in message
    assert not (tmp_path / "out").exists()

    with pytest.raises(PrepareError, match="no such folder"):
        prepare_dataset("DDN", tmp_path / "absent", tmp_path / "out", progress=False)


def test_folders_without_train_or_test_in_their_names(tmp_path: Path) -> None:
    image(tmp_path / "raw/heavy/rain/X2/norain-1x2.png", (0, 0, 0))
    image(tmp_path / "raw/heavy/norain/norain-1.png", (0, 0, 0))
    with pytest.raises(PrepareError, match="cannot tell train from test"):
        prepare_dataset("Rain200H", tmp_path / "raw", tmp_path / "out", progress=False)


def test_unknown_dataset_name_lists_the_benchmarks(tmp_path: Path) -> None:
    with pytest.raises(PrepareError, match=r"unknown dataset 'Rain100X'; known benchmarks: Rain200L, .*SPA"):
        prepare_dataset("Rain100X", tmp_path, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------------------------------------------------------
# Finding the split folders


def rain200_pairs(folder: Path, count: int, color: int = 0) -> None:
    """folder/rain/X2/norain-{i}x2.png and folder/norain/norain-{i}.png for i = 1..count."""
    for i in range(1, count + 1):
        image(folder / "rain" / "X2" / f"norain-{i}x2.png", rainy_color(i + color))
        image(folder / "norain" / f"norain-{i}.png", clean_color(i + color))


def test_split_names_are_matched_as_whole_folder_names(tmp_path: Path) -> None:
    # "latest" contains "test" and "constraint" contains "train", but neither names a split.
    src = rain200_release(tmp_path / "raw", train=3, test=2)
    rain200_pairs(src / "latest", 5)
    rain200_pairs(src / "backup/constraint", 4)
    report = prepare_dataset("Rain200H", src, tmp_path / "out", progress=False)
    assert report.splits["train"].source == "rain_data_train_Heavy/rain/X2 + rain_data_train_Heavy/norain"
    assert report.splits["test"].source == "rain_data_test_Heavy/rain/X2 + rain_data_test_Heavy/norain"
    assert (report.splits["train"].written, report.splits["test"].written) == (3, 2)
    assert report.ignored == [
        "backup/constraint: holds rain/ and norain/ but no folder name on its path says train or test",
        "latest: holds rain/ and norain/ but no folder name on its path says train or test",
    ]
    assert "  not used: latest: holds rain/ and norain/" in report.format()

    # With only such folders, the split cannot be told: an error naming them, not a guess.
    other = tmp_path / "raw2"
    rain200_pairs(other / "latest", 1)
    rain200_pairs(other / "constraint", 1)
    with pytest.raises(PrepareError, match=r"found rain/ and norain/ in constraint, latest but cannot tell train"):
        prepare_dataset("Rain200H", other, tmp_path / "out2", progress=False)


def test_ddn_generic_split_names_inside_a_release_folder(tmp_path: Path) -> None:
    # The mmediting copy: Rain1400/train and Rain1400/test; the innermost name decides. "Retest" is not a split.
    src = tmp_path / "raw"
    for folder, i in (("Rain1400/train", 1), ("Rain1400/test", 2), ("Rain1400/Retest", 3)):
        image(src / folder / "ground_truth" / f"{i}.jpg", clean_color(i))
        image(src / folder / "rainy_image" / f"{i}_1.jpg", rainy_color(i))
    report = prepare_dataset("DDN", src, tmp_path / "out", progress=False)
    assert report.splits["train"].source == "Rain1400/train/rainy_image + Rain1400/train/ground_truth"
    assert report.splits["test"].source == "Rain1400/test/rainy_image + Rain1400/test/ground_truth"
    assert os.listdir(tmp_path / "out/test/input") == ["2_1.jpg"]
    assert report.ignored == ["Rain1400/Retest: passed over for Rain1400/test, whose name says test more directly"]


def test_folders_of_another_benchmark_are_passed_over(tmp_path: Path) -> None:
    src = tmp_path / "raw"
    for name, color in (("Rain200H", 0), ("Rain200L", 10)):
        rain200_pairs(src / name / "train", 2, color)
        rain200_pairs(src / name / "test", 1, color)
    report = prepare_dataset("Rain200L", src, tmp_path / "out", progress=False)
    assert report.splits["train"].source == "Rain200L/train/rain/X2 + Rain200L/train/norain"
    assert tuple(read_image(tmp_path / "out/test/target/1.png")[0, 0]) == clean_color(11)


def test_did_test_folder_is_chosen_by_name(tmp_path: Path) -> None:
    src = tmp_path / "DID-MDN-datasets"
    side_by_side(src / "DID-MDN-training/Rain_Light/train2018new/1.jpg", (1, 2, 3), (4, 5, 6))
    side_by_side(src / "DID-MDN-test/7.jpg", (1, 2, 3), (4, 5, 6))
    side_by_side(src / "latest/8.jpg", (1, 2, 3), (4, 5, 6))  # a stray image folder, not a split
    report = prepare_dataset("DID", src, tmp_path / "out", progress=False)
    assert report.splits["train"].source == "DID-MDN-training/Rain_Light/train2018new"
    assert report.splits["test"].source == "DID-MDN-test"
    assert os.listdir(tmp_path / "out/test/input") == ["7.png"]
    assert report.ignored == ["latest: holds side-by-side images but no folder name on its path says train or test"]


# ---------------------------------------------------------------------------------------------------------------
# --train-dir and --test-dir


def test_train_and_test_dir_are_used_without_searching(tmp_path: Path) -> None:
    src = tmp_path / "raw"
    rain200_pairs(src / "rain_data_train_Heavy", 3)
    rain200_pairs(src / "a/rain_data_test_Heavy", 1)
    rain200_pairs(src / "b/rain_data_test_Heavy", 2)  # two test folders: searching for test is an error
    with pytest.raises(PrepareError, match=r"several test folders holding rain/ and norain/: .*pass --test-dir"):
        prepare_dataset("Rain200H", src, tmp_path / "out", progress=False)

    mine = tmp_path / "elsewhere/my_heavy_pairs"  # any name, outside --src
    rain200_pairs(mine, 2, color=5)
    report = prepare_dataset(
        "Rain200H", src, tmp_path / "out", progress=False, train_dir=mine, test_dir=src / "b/rain_data_test_Heavy"
    )
    assert report.splits["train"].source == f"{mine.as_posix()}/rain/X2 + {mine.as_posix()}/norain"
    assert report.splits["test"].source == "b/rain_data_test_Heavy/rain/X2 + b/rain_data_test_Heavy/norain"
    assert same_file(tmp_path / "out/train/target/2.png", mine / "norain/norain-2.png")
    assert sorted(os.listdir(tmp_path / "out/test/input")) == ["1.png", "2.png"]


def test_one_split_given_the_other_searched(tmp_path: Path) -> None:
    # DID-Data's second test set has no known folder name; --test-dir points at it, training is still found.
    src = tmp_path / "DID-MDN-datasets"
    side_by_side(src / "DID-MDN-training/Rain_Heavy/train2018new/1.jpg", (1, 2, 3), (4, 5, 6))
    side_by_side(src / "DID-MDN-test/1.jpg", (1, 2, 3), (4, 5, 6))
    side_by_side(src / "Test_B/5.png", (7, 8, 9), (10, 11, 12))
    report = prepare_dataset("DID", src, tmp_path / "out", progress=False, test_dir=src / "Test_B")
    assert report.splits["train"].source == "DID-MDN-training/Rain_Heavy/train2018new"
    assert report.splits["test"].source == "Test_B"
    assert os.listdir(tmp_path / "out/test/target") == ["5.png"]
    assert np.array_equal(read_image(tmp_path / "out/test/target/5.png"), np.full((16, 16, 3), (10, 11, 12), np.uint8))

    # A training folder given for DID-Data may be the folder of rain levels; already-paired folders work too.
    paired = tmp_path / "paired"
    image(paired / "input/x.png", rainy_color(1))
    image(paired / "target/x.png", clean_color(1))
    report = prepare_dataset(
        "DID", src, tmp_path / "out2", progress=False, train_dir=src / "DID-MDN-training", test_dir=paired
    )
    assert report.splits["train"].source == "DID-MDN-training/Rain_Heavy/train2018new"
    assert os.listdir(tmp_path / "out2/train/input") == ["heavy_1.png"]
    assert report.splits["test"].source == f"{paired.as_posix()}/input + {paired.as_posix()}/target"


def test_a_given_folder_must_fit_the_layout(tmp_path: Path) -> None:
    src = rain200_release(tmp_path / "raw", train=1, test=1)
    image(tmp_path / "photos/1.png", (0, 0, 0))
    with pytest.raises(PrepareError) as caught:
        prepare_dataset("Rain200H", src, tmp_path / "out", progress=False, test_dir=tmp_path / "photos")
    assert str(caught.value) == (
        f"{tmp_path / 'photos'}: holds neither rain/ and norain/ nor input/ and target/; point --test-dir at the "
        "Rain200H test folder"
    )
    with pytest.raises(PrepareError, match=r"absent: no such folder; --train-dir must be the folder holding"):
        prepare_dataset("Rain200H", src, tmp_path / "out", progress=False, train_dir=tmp_path / "absent")
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------------------------------------------------------
# Command line and exit status


def test_cli_arguments_and_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser()
    prepare_command.add_arguments(parser)
    src = rain200_release(tmp_path / "raw", train=1, test=1)
    args = parser.parse_args(["Rain200H", "--src", str(src), "--dst", str(tmp_path / "out"), "--no-progress"])
    assert (args.copy, args.overwrite, args.train_dir, args.test_dir) == (False, False, None, None)
    assert prepare_command.run(args) == 1  # 1 of 1800 and 1 of 200: the report is printed, the status says check it
    captured = capsys.readouterr()
    assert captured.out.splitlines()[0].split() == ["dataset", "split", "written", "expected", "missing", "status"]
    assert "Rain200H  test         1       200        0  CHECK" in captured.out
    assert "check train (CHECK), test (CHECK)" in captured.err
    assert (tmp_path / "out/test/target/1.png").is_file()


@pytest.fixture(scope="module")
def full_rain200l(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Rain200L release with the published 1800 + 200 pairs (tiny images, one encoded file written 4000 times)."""
    root = tmp_path_factory.mktemp("full")
    data = image(root / "seed.png", (1, 2, 3)).read_bytes()
    for split, count in (("train", 1800), ("test", 200)):
        folder = root / "raw" / f"rain_data_{split}_Light"
        (folder / "rain/X2").mkdir(parents=True)
        (folder / "norain").mkdir()
        for i in range(1, count + 1):
            (folder / f"rain/X2/norain-{i}x2.png").write_bytes(data)
            (folder / f"norain/norain-{i}.png").write_bytes(data)
    return root / "raw"


def test_exit_status_is_zero_only_when_every_split_is_ok(
    tmp_path: Path, full_rain200l: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    assert main(["prepare", "rain200l", "--src", str(full_rain200l), "--dst", str(out), "--no-progress"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].split() == ["Rain200L", "train", "1800", "1800", "0", "ok"]
    assert lines[2].split() == ["Rain200L", "test", "200", "200", "0", "ok"]

    # The test split not found: the training split is still written and reported, the status is 1.
    train_only = tmp_path / "train_only"
    train_only.mkdir()
    (train_only / "rain_data_train_Light").symlink_to(full_rain200l / "rain_data_train_Light")
    argv = ["prepare", "Rain200L", "--src", str(train_only), "--dst", str(tmp_path / "out2"), "--no-progress"]
    assert main(argv) == 1
    captured = capsys.readouterr()
    assert "Rain200L  test         0       200        0  not found" in captured.out
    assert "test: no test folder found in the source" in captured.out
    assert "check test (not found)" in captured.err
    assert len(os.listdir(tmp_path / "out2/train/target")) == 1800

    # A missing counterpart: status 1 as well.
    given = ["--train-dir", str(full_rain200l / "rain_data_train_Light"), "--test-dir", str(tmp_path / "test")]
    rain200_pairs(tmp_path / "test", 200)
    (tmp_path / "test/norain/norain-7.png").unlink()
    argv = ["prepare", "Rain200L", "--src", str(tmp_path), "--dst", str(tmp_path / "out3"), "--no-progress", *given]
    assert main(argv) == 1
    assert "Rain200L  test       199       200        1  CHECK" in capsys.readouterr().out


def test_cli_errors_and_default_destination(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["prepare", "Rain100X", "--src", str(tmp_path)]) == 2
    assert "drsformer prepare: error: unknown dataset 'Rain100X'; known benchmarks:" in capsys.readouterr().err

    src = rain200_release(tmp_path / "raw", train=1, test=1)
    monkeypatch.chdir(tmp_path)
    assert main(["prepare", "rain_200_heavy", "--src", "raw", "--no-progress"]) == 1
    assert (tmp_path / "datasets/Rain200H/train/input/1.png").is_file()  # NAME's canonical spelling
    assert same_file(tmp_path / "datasets/Rain200H/test/target/1.png", src / "rain_data_test_Heavy/norain/norain-1.png")
