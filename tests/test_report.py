"""drsformer test --report: the page parsed with html.parser (links, rows, order, numbers equal to the JSON),
an unreadable image, --compare-to, escaping, the generic no-reference columns, thumbnails and histograms."""

from __future__ import annotations

import json
import math
import os
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

import numpy as np
import pytest
from conftest import make_pairs, noisy, save_tiny

from drsformer.cli import main
from drsformer.config.testing import load_options
from drsformer.data.io import read_image, write_image
from drsformer.evaluation.report import SCORES_FILE, write_report
from drsformer.evaluation.report.histogram import Series, bin_edges, histogram_svg
from drsformer.evaluation.report.thumbnails import Thumbnails
from drsformer.metrics import evaluate_pair


class Page(HTMLParser):
    """What the tests look at: links, images, scripts, and the rows of the image table and the summary."""

    def __init__(self, text: str) -> None:
        super().__init__(convert_charrefs=True)
        self.links: list[str] = []
        self.images: list[dict] = []
        self.scripts = 0
        self.heads: list[dict] = []  # <th> of the image table: attributes + text
        self.rows: list[dict] = []  # <tr> of the image table: attributes + cell texts
        self.summary: dict[str, list[str]] = {}  # metric key -> cell texts
        self.counts: list[int] = []  # data-count of the histogram bars
        self._table: str | None = None
        self._cells: list[str] | None = None
        self._text: list[str] = []
        self._in_th = False
        self._metric: str | None = None
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "a":
            self.links.append(a["href"])
        elif tag == "img":
            self.images.append(a)
        elif tag == "script":
            self.scripts += 1
        elif tag == "table":
            self._table = a.get("id") or a.get("class")
        elif tag == "rect" and "data-count" in a:
            self.counts.append(int(a["data-count"]))
        elif tag == "tr" and self._table == "rows" and "data-name" in a:
            self.rows.append(dict(a, cells=[]))
            self._cells = self.rows[-1]["cells"]
        elif tag == "tr" and self._table == "summary":
            self._metric, self._cells = a.get("data-metric"), []
        elif tag == "th" and self._table == "rows":
            self.heads.append(dict(a, text=""))
            self._in_th = True
        elif tag == "td":
            self._text = []

    def handle_endtag(self, tag):
        if tag == "td" and self._cells is not None:
            self._cells.append("".join(self._text))
        elif tag == "th":
            self._in_th = False
        elif tag == "tr" and self._table == "summary" and self._metric:
            self.summary[self._metric] = self._cells
        elif tag == "table":
            self._table = None

    def handle_data(self, data):
        self._text.append(data)
        if self._in_th:
            self.heads[-1]["text"] += data


def targets_exist(page_path: Path, page: Page) -> None:
    """Every link and image of the page is a relative URL to a file on disk, as a browser reads it."""
    for link in page.links + [i["src"] for i in page.images]:
        url = urlsplit(link)
        assert not (url.scheme or url.netloc or url.query or url.fragment), link
        assert (page_path.parent / unquote(url.path)).is_file(), link


def column(page: Page, label: str) -> tuple[str, int]:
    """The data attribute and the cell index of the column headed ``label``."""
    for index, head in enumerate(page.heads):
        if head["text"] == label:
            return f"data-{head.get('data-col')}", index
    raise AssertionError(f"no column {label!r} in {[h['text'] for h in page.heads]}")


def make_set(root: Path, noise=(5, 40, 15, 80), size=(24, 32)) -> Path:
    """Pairs whose rainy inputs differ in how noisy they are, so their scores differ."""
    return make_pairs(root, len(noise), size, rain=noisy(*noise), name="im{i}", levels=(40, 216))


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("weights")
    return save_tiny(folder / "a.pth", seed=0)[0], save_tiny(folder / "b.pth", seed=1)[0]


def run_test(weights: Path, data: Path, out: Path, *extra: str) -> tuple[int, dict]:
    report = out.parent / f"{out.name}.json"
    argv = ["test", "--weights", str(weights), "--data", f"Rain200H={data}", "--out", str(out), "--json", str(report)]
    code = main([*argv, "--quiet", *extra])
    return code, json.loads(report.read_text())["datasets"][0]


def test_page_links_rows_order_and_numbers_equal_the_json(tmp_path, weights) -> None:
    data = make_set(tmp_path / "set")
    code, entry = run_test(weights[0], data, tmp_path / "out", "--report")
    assert code == 0
    page_path = tmp_path / "out" / "Rain200H" / "report.html"
    page = Page(page_path.read_text(encoding="utf-8"))
    targets_exist(page_path, page)
    assert page.scripts == 1 and len(page.images) == 3 * 4  # rainy | derained | ground truth per image
    assert json.loads((page_path.parent / SCORES_FILE).read_text()) == entry  # what --compare-to reads

    # one row per image, worst PSNR first, every number the JSON's
    assert (
        sorted(r["data-name"] for r in page.rows)
        == sorted(i["name"] for i in entry["images"])
        == [f"im{i}.png" for i in range(4)]
    )
    by_name = {i["name"]: i for i in entry["images"]}
    psnr, psnr_cell = column(page, "PSNR")
    ssim, ssim_cell = column(page, "SSIM")
    gain, gain_cell = column(page, "ΔPSNR vs rainy")
    values = [float(r[psnr]) for r in page.rows]
    assert values == sorted(values) and len(set(values)) == 4
    for row in page.rows:
        image = by_name[row["data-name"]]
        assert float(row[psnr]) == image["psnr"] and float(row[ssim]) == image["ssim"]
        assert float(row[gain]) == image["psnr"] - image["rainy_psnr"]
        assert row["cells"][psnr_cell] == f"{image['psnr']:.2f}" and row["cells"][ssim_cell] == f"{image['ssim']:.4f}"
        assert row["cells"][gain_cell] == f"{image['psnr'] - image['rainy_psnr']:+.2f}"
        # the rainy input's scores: the same protocol on the input file
        rainy, target = (read_image(data / role / row["data-name"]) for role in ("input", "target"))
        before = evaluate_pair(rainy, target, "restormer")
        assert (image["rainy_psnr"], image["rainy_ssim"]) == (before.psnr, before.ssim)
    assert entry["rainy_psnr"] == pytest.approx(math.fsum(i["rainy_psnr"] for i in entry["images"]) / 4, abs=1e-12)
    # means beside the paper's, as the JSON has them
    assert page.summary["psnr"][:4] == ["PSNR", f"{entry['psnr']:.2f}", f"{entry['rainy_psnr']:.2f}",
                                        f"{entry['psnr'] - entry['rainy_psnr']:+.2f}"]  # fmt: skip
    assert page.summary["psnr"][4] == "32.17" and page.summary["ssim"][4] == "0.9326"
    assert sum(page.counts) == 4  # the histogram counts every image once
    # thumbnails: JPEG, at most 256 pixels on the long side, never enlarged
    for image in page.images:
        thumb = page_path.parent / unquote(image["src"])
        assert thumb.suffix == ".jpg" and max(read_image(thumb).shape[:2]) <= 256


def test_an_unreadable_image_leaves_a_row_that_says_so(tmp_path, weights) -> None:
    data = make_set(tmp_path / "set", noise=(5, 40, 15))
    (data / "input" / "im1.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    options = tmp_path / "t.yml"
    options.write_text(f"report: true\nweights: {weights[0]}\ndatasets: {{Rain200H: {data}}}\n")
    assert load_options(options)["report"] is True
    assert main(["test", "-opt", str(options), "--out", str(tmp_path / "out"), "--quiet"]) == 1
    page_path = tmp_path / "out" / "Rain200H" / "report.html"
    page = Page(page_path.read_text(encoding="utf-8"))
    targets_exist(page_path, page)
    assert [r["data-name"] for r in page.rows][0] == "im1.png" and len(page.rows) == 3  # failed rows first
    failed = page.rows[0]
    assert failed["class"] == "failed" and "did not run" in failed["cells"][1] and "cannot decode" in failed["cells"][1]
    assert "im1.png: cannot decode" in failed["cells"][2]  # the rainy picture cell says why it has no thumbnail
    assert failed["data-v0"] == "" and failed["cells"][column(page, "PSNR")[1]] == "-"
    assert not list(page_path.parent.glob(".*.tmp"))  # atomic writes leave no temporary files


def test_compare_to_another_run_ranks_by_the_difference(tmp_path, weights, capsys) -> None:
    data = make_set(tmp_path / "set")
    code, other = run_test(weights[0], data, tmp_path / "a")
    assert code == 0 and not (tmp_path / "a" / "Rain200H" / "report.html").exists()
    assert (tmp_path / "a" / "Rain200H" / SCORES_FILE).is_file()  # written without --report too
    code, entry = run_test(weights[1], data, tmp_path / "b", "--compare-to", str(tmp_path / "a"))
    assert code == 0  # --compare-to implies --report
    page_path = tmp_path / "b" / "Rain200H" / "report.html"
    text = page_path.read_text(encoding="utf-8")
    page = Page(text)
    targets_exist(page_path, page)
    assert [h["text"] for h in page.heads][2:6] == ["rainy", "derained", "other run", "ground truth"]
    assert f"{tmp_path / 'a' / 'Rain200H' / SCORES_FILE}" in text  # where the other run's scores came from
    theirs = {i["name"]: i["psnr"] for i in other["images"]}
    ours = {i["name"]: i["psnr"] for i in entry["images"]}
    delta, cell = column(page, "ΔPSNR vs other")
    values = [float(r[delta]) for r in page.rows]
    assert values == sorted(values)  # where this run lost most, first
    for row in page.rows:
        assert float(row[delta]) == ours[row["data-name"]] - theirs[row["data-name"]]
        assert row["cells"][cell] == f"{ours[row['data-name']] - theirs[row['data-name']]:+.2f}"

    # without its scores.json the other run's images are scored against the targets: the same numbers
    (tmp_path / "a" / "Rain200H" / SCORES_FILE).unlink()
    run_test(weights[1], data, tmp_path / "b", "--compare-to", str(tmp_path / "a"))
    text = page_path.read_text(encoding="utf-8")
    assert "scored against this run&#x27;s targets" in text
    assert [float(r[delta]) for r in Page(text).rows] == values
    # an image the other run lacks: its row says so, has no difference, and comes first
    (tmp_path / "a" / "Rain200H" / "im2.png").unlink()
    run_test(weights[1], data, tmp_path / "b", "--compare-to", str(tmp_path / "a"))
    page = Page(page_path.read_text(encoding="utf-8"))
    targets_exist(page_path, page)
    first = page.rows[0]
    assert first["data-name"] == "im2.png" and first[delta] == "" and "im2.png: no such file" in first["cells"][4]


def _error(capsys, argv: list[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("drsformer test: error:") and "\n" not in err
    return err


def test_compare_to_errors_name_the_folder_before_any_image_runs(tmp_path, weights, capsys) -> None:
    data = make_set(tmp_path / "set", noise=(5,))
    out = tmp_path / "out"
    argv = ["test", "--weights", str(weights[0]), "--data", f"Rain200H={data}", "--out", str(out), "--quiet"]
    err = _error(capsys, [*argv, "--compare-to", str(tmp_path / "nowhere")])
    assert "--compare-to" in err and "nowhere: no such folder" in err
    (tmp_path / "other" / "DID").mkdir(parents=True)
    err = _error(capsys, [*argv, "--compare-to", str(tmp_path / "other")])
    assert "other/Rain200H: no such folder" in err and "it holds DID" in err
    (tmp_path / "other" / "Rain200H").mkdir()
    (tmp_path / "other" / "Rain200H" / SCORES_FILE).write_text("{not json")
    err = _error(capsys, [*argv, "--compare-to", str(tmp_path / "other")])
    assert f"other/Rain200H/{SCORES_FILE}: not valid JSON" in err
    out.mkdir()
    err = _error(capsys, [*argv, "--compare-to", str(out)])
    assert "is this run's own --out folder" in err
    assert not list(out.iterdir())  # nothing ran


def _pairs(root: Path, names: list[str], target: bool = True) -> list[tuple[Path, Path | None]]:
    rng = np.random.default_rng(1)
    pairs = []
    for name in names:
        image = rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)
        write_image(root / "input" / name, image)
        write_image(root / "out" / name, image)
        if target:
            write_image(root / "target" / name, image)
        pairs.append((root / "input" / name, root / "target" / name if target else None))
    return pairs


def test_malicious_file_names_are_escaped(tmp_path) -> None:
    names = ['a"><img src=x onerror=alert(1)>.png', "<script>alert('x')<.png", "50% & #1?.png"]
    pairs = _pairs(tmp_path, names)
    entry = {
        "name": "<b>set</b>",
        "protocol": "restormer",
        "images": [{"name": n, "psnr": 20.0 + i, "ssim": 0.5} for i, n in enumerate(names)],
        "failed": [],
    }
    page_path = write_report(entry, pairs, tmp_path / "out")
    text = page_path.read_text(encoding="utf-8")
    page = Page(text)
    assert page.scripts == 1 and "<b>set</b>" not in text and "&lt;b&gt;set&lt;/b&gt;" in text
    assert all(set(image) <= {"src", "width", "height", "loading", "decoding", "alt"} for image in page.images)
    assert [r["data-name"] for r in page.rows] == names  # read back intact, worst (lowest PSNR) first
    assert [r["cells"][1] for r in page.rows] == names
    targets_exist(page_path, page)


def test_no_reference_metrics_fill_the_same_columns(tmp_path) -> None:
    """Real rain: images carry NIQE/BRISQUE (lower is better) and no target; the page shows those instead."""
    names = ["x.png", "y.png", "z.png"]
    pairs = _pairs(tmp_path, names, target=False)
    niqe = {"x.png": 4.0, "y.png": 6.5, "z.png": 5.0}
    images = [{"name": n, "niqe": niqe[n], "brisque": 30.0, "rainy_niqe": 7.0, "rainy_brisque": 40.0} for n in names]
    entry = {"name": "real", "protocol": "none", "images": images, "failed": []}
    page_path = write_report(entry, pairs, tmp_path / "out")
    page = Page(page_path.read_text(encoding="utf-8"))
    targets_exist(page_path, page)
    labels = [h["text"] for h in page.heads]
    assert labels == ["#", "name", "rainy", "derained", "NIQE", "BRISQUE", "ΔNIQE vs rainy", "ΔBRISQUE vs rainy"]
    assert [h.get("data-better") for h in page.heads[4:]] == ["low"] * 4
    assert [r["data-name"] for r in page.rows] == ["y.png", "z.png", "x.png"]  # highest NIQE first
    gain, cell = column(page, "ΔNIQE vs rainy")
    assert [r["cells"][cell] for r in page.rows] == ["-0.500", "-2.000", "-3.000"]
    assert [float(r[gain]) for r in page.rows] == [-0.5, -2.0, -3.0]
    assert "PSNR" not in labels and "ground truth" not in labels
    assert page.summary["niqe"][1] == f"{math.fsum(niqe.values()) / 3:.3f}"  # no mean in the entry: the rows'


def test_thumbnails_are_made_once_and_again_when_the_source_changes(tmp_path) -> None:
    source = tmp_path / "big.png"
    write_image(source, np.zeros((300, 600, 3), np.uint8))
    thumbs = Thumbnails(tmp_path / "thumbs")
    path, size = thumbs.make(source, "rainy", "big")
    assert size == (256, 128) and read_image(path).shape == (128, 256, 3)
    thumbs.save()
    os.utime(path, ns=(1, 1))  # marks the file: a reuse leaves it alone
    assert Thumbnails(tmp_path / "thumbs").make(source, "rainy", "big") == (path, (256, 128))
    assert path.stat().st_mtime_ns == 1
    write_image(source, np.zeros((40, 20, 3), np.uint8))  # a new source: a new thumbnail, never enlarged
    assert Thumbnails(tmp_path / "thumbs").make(source, "rainy", "big")[1] == (20, 40)


def test_histogram_counts_every_finite_value_once() -> None:
    values = [20.0, 20.5, 21.2, 25.0, 33.3, 33.3, math.inf]
    start, width, n = bin_edges(values[:-1])
    assert start <= 20.0 and start + n * width > 33.3 and n <= 30
    svg = histogram_svg([Series("a", values, "#000")], "t", [(22.0, "mean")])
    counts = Page(svg).counts
    assert sum(counts) == 6 and "1 infinite value(s) not shown" in svg
    assert "no values to show" in histogram_svg([Series("a", [], "#000")], "t")
    assert sum(Page(histogram_svg([Series("a", [5.0, 5.0], "#000")], "t")).counts) == 2  # one value: one bin
