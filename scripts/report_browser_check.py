"""Checks a ``drsformer test --report`` page in a real browser (headless Chromium); not part of the test suite.

    # a 200-pair synthetic test set from scikit-image's bundled photos (crops at several scales, two densities)
    python scripts/report_browser_check.py make-set /tmp/syn200 --count 200
    drsformer test --weights W --data syn200=/tmp/syn200 --protocol restormer --out /tmp/r200 --report
    # load the page, time it, sort and filter it, take a screenshot
    python scripts/report_browser_check.py measure /tmp/r200/syn200/report.html --screenshot docs/x.png

``measure`` drives Debian's Chromium (``apt-get install chromium``) with Playwright, the driver the page tests
use (``pip install playwright``, in the ``dev`` extra; its own browser downloads are not needed). Each load is a
fresh browser context, so nothing comes from a cache; it reports the median of the page's own
Navigation Timing (``domContentLoadedEventEnd`` and ``loadEventEnd`` from the start of the navigation), the first
contentful paint, how many thumbnails the browser had fetched, and how long a click on a column header (a sort
of every row) and a filter keystroke took, timed in the page with ``performance.now()``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

import numpy as np

PHOTOS = (
    "astronaut.png", "brick.png", "camera.png", "chelsea.png", "coffee.png", "coins.png", "grass.png", "gravel.png",
    "hubble_deep_field.jpg", "ihc.png", "moon.png", "motorcycle_left.png", "motorcycle_right.png", "retina.jpg",
    "rocket.jpg", "clock_motion.png", "horse.png", "page.png", "text.png", "logo.png",
)  # fmt: skip


def make_set(out: Path, count: int, seed: int, size: tuple[int, int] = (240, 320)) -> None:
    """``out/{input,target}``: ``count`` crops of the bundled photos at random scales and flips, half with
    medium and half with heavy rain from ``drsformer synth-rain``."""
    import cv2

    from drsformer.data.io import write_image
    from drsformer.data.synth_rain import synthesize_folder
    from drsformer.demo.data import bundled_photo

    rng = np.random.default_rng(seed)
    clean = Path(tempfile.mkdtemp(prefix="clean-"))
    for i in range(count):
        density = "medium" if i % 2 == 0 else "heavy"
        photo = bundled_photo(PHOTOS[i % len(PHOTOS)])
        h, w = size if rng.random() < 0.7 else size[::-1]
        scale = max(h / photo.shape[0], w / photo.shape[1]) * rng.uniform(1.0, 2.0)
        big = cv2.resize(photo, (max(w, round(photo.shape[1] * scale)), max(h, round(photo.shape[0] * scale))))
        y, x = rng.integers(0, big.shape[0] - h + 1), rng.integers(0, big.shape[1] - w + 1)
        crop = big[y : y + h, x : x + w]
        if rng.random() < 0.5:
            crop = crop[:, ::-1]
        write_image(clean / density / f"{Path(PHOTOS[i % len(PHOTOS)]).stem}_{i:03d}_{density}.png", crop)
    for density in ("medium", "heavy"):
        synthesize_folder(clean / density, out, density=density, seed=0)
    shutil.rmtree(clean)


CHROMIUM_FLAGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--hide-scrollbars",
]  # fmt: skip


TIMING = """new Promise(done => {
  const read = () => {
    const nav = performance.getEntriesByType("navigation")[0];
    const paint = performance.getEntriesByType("paint").find(p => p.name === "first-contentful-paint");
    const images = Array.from(document.images);
    return {dom: nav.domContentLoadedEventEnd, load: nav.loadEventEnd, fcp: paint ? paint.startTime : null,
            rows: document.querySelectorAll("#rows tbody tr").length, images: images.length,
            fetched: images.filter(i => i.complete && i.naturalWidth > 0).length};
  };
  const started = performance.now();
  const wait = () => (read().fcp !== null || performance.now() - started > 3000)
    ? done(JSON.stringify(read())) : setTimeout(wait, 10);
  wait();
})"""  # the first paint's entry is recorded when the frame is presented, which can come after the load event

# Installed before the page's own code: records when the window is first full of rows whose thumbnails are all
# loaded (the moment a reader sees the first screen complete), checking every 5 ms from the start of parsing.
FIRST_SCREEN = """(() => {
  const check = () => {
    const table = document.getElementById("rows");
    const filled = table && (table.getBoundingClientRect().bottom >= innerHeight || document.readyState !== "loading");
    const seen = Array.from(document.images).filter(i => {
      const r = i.getBoundingClientRect();
      return r.bottom > 0 && r.top < innerHeight;
    });
    if (filled && seen.every(i => i.complete && i.naturalWidth > 0)) {
      window.__firstScreen = {visible: seen.length, at: performance.now()};
    } else setTimeout(check, 5);
  };
  setTimeout(check, 0);
})()"""
VISIBLE = """new Promise(done => {
  const wait = () => window.__firstScreen ? done(JSON.stringify(window.__firstScreen)) : setTimeout(wait, 20);
  wait();
})"""

INTERACT = """JSON.stringify((() => {
  const th = document.querySelector('#rows th[data-col="v1"]') || document.querySelector('#rows th[data-col="name"]');
  let t = performance.now(); th.click(); const sort = performance.now() - t;
  const filter = document.getElementById("filter");
  t = performance.now(); filter.value = "_1"; filter.dispatchEvent(new Event("input"));
  const search = performance.now() - t;
  const shown = document.getElementById("shown").textContent;
  filter.value = ""; filter.dispatchEvent(new Event("input"));
  document.querySelector('#rows th.sorted') && document.querySelector('#rows th[data-col="rank"]').click();
  return {sort_ms: sort, filter_ms: search, filtered: shown};
})())"""


def small_png(path: Path, colors: int = 256) -> None:
    """Rewrites a screenshot as a palette PNG (``colors`` colours, dithered), about a third of the size, so it
    can be committed; Pillow comes with torchvision."""
    from PIL import Image

    with Image.open(path) as image:
        small = image.convert("RGB").quantize(
            colors, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.FLOYDSTEINBERG
        )
    small.save(path, optimize=True)


def measure(page: Path, screenshot: Path | None, repeats: int, binary: str, size: tuple[int, int]) -> dict:
    from playwright.sync_api import sync_playwright

    executable = shutil.which(binary)
    if executable is None:
        raise SystemExit(f"{binary}: not found; apt-get install chromium, or give --chromium PATH")
    url = page.resolve().as_uri()
    loads = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_FLAGS)
        try:
            for _ in range(repeats):  # a fresh context per load: an empty cache, every file read again
                context = browser.new_context(viewport={"width": size[0], "height": size[1]})
                context.add_init_script(FIRST_SCREEN)
                tab = context.new_page()
                tab.goto(url, wait_until="load")
                loads.append(json.loads(tab.evaluate(TIMING)) | json.loads(tab.evaluate(VISIBLE)))
                if len(loads) < repeats:
                    context.close()
            if screenshot is not None:  # the page as it opens, every thumbnail in the window shown
                screenshot.parent.mkdir(parents=True, exist_ok=True)
                tab.screenshot(path=str(screenshot))
                small_png(screenshot)
            interaction = json.loads(tab.evaluate(INTERACT))
        finally:
            browser.close()
    folder = page.parent
    thumbs = [p for p in (folder / "thumbs").rglob("*.jpg")]
    return {
        "page": str(page),
        "html_bytes": page.stat().st_size,
        "thumbnails": len(thumbs),
        "thumbnail_bytes": sum(p.stat().st_size for p in thumbs),
        "loads": repeats,
        "median_dom_content_loaded_ms": statistics.median(x["dom"] for x in loads),
        "median_load_event_end_ms": statistics.median(x["load"] for x in loads),
        "median_first_contentful_paint_ms": statistics.median(fcp)
        if (fcp := [x["fcp"] for x in loads if x["fcp"]])
        else None,
        "median_first_screen_of_thumbnails_ms": statistics.median(x["at"] for x in loads),
        "thumbnails_in_first_screen": loads[-1]["visible"],
        "rows": loads[-1]["rows"],
        "images_in_page": loads[-1]["images"],
        "images_fetched_at_load": loads[-1]["fetched"],
        **interaction,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    make = commands.add_parser("make-set", help="a synthetic paired test set from scikit-image's photos")
    make.add_argument("out", type=Path)
    make.add_argument("--count", type=int, default=200)
    make.add_argument("--seed", type=int, default=0)
    check = commands.add_parser("measure", help="load, time, sort, filter and screenshot a report page")
    check.add_argument("page", type=Path)
    check.add_argument("--screenshot", type=Path, default=None)
    check.add_argument("--repeats", type=int, default=5)
    check.add_argument("--chromium", default="chromium")
    check.add_argument("--size", default="1400x1800", help="window WIDTHxHEIGHT")
    args = parser.parse_args(argv)
    if args.command == "make-set":
        make_set(args.out, args.count, args.seed)
        return 0
    width, height = (int(v) for v in args.size.split("x"))
    print(json.dumps(measure(args.page, args.screenshot, args.repeats, args.chromium, (width, height)), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
