"""Checks a ``drsformer test --report`` page in a real browser (headless Chromium); not part of the test suite.

    # a 200-pair synthetic test set from scikit-image's bundled photos (crops at several scales, two densities)
    python scripts/report_browser_check.py make-set /tmp/syn200 --count 200
    drsformer test --weights W --data syn200=/tmp/syn200 --protocol restormer --out /tmp/r200 --report
    # load the page, time it, sort and filter it, take a screenshot
    python scripts/report_browser_check.py measure /tmp/r200/syn200/report.html --screenshot docs/x.png

``measure`` drives Chromium through the DevTools protocol over ``--remote-debugging-pipe`` (two pipes, JSON
messages ending in a NUL byte), so it needs nothing beyond the standard library and a ``chromium`` binary
(``apt-get install chromium``). Each load is a fresh navigation; it reports the median of the page's own
Navigation Timing (``domContentLoadedEventEnd`` and ``loadEventEnd`` from the start of the navigation), the first
contentful paint, how many thumbnails the browser had fetched, and how long a click on a column header (a sort
of every row) and a filter keystroke took, timed in the page with ``performance.now()``.
"""

from __future__ import annotations

import argparse
import base64
import fcntl
import json
import os
import shutil
import statistics
import subprocess
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


class Browser:
    """Headless Chromium spoken to over ``--remote-debugging-pipe``."""

    def __init__(self, binary: str, width: int, height: int) -> None:
        to_child, self._write = os.pipe()
        self._read, from_child = os.pipe()
        self.profile = tempfile.mkdtemp(prefix="chromium-")
        flags = [
            "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync", "--hide-scrollbars",
            f"--user-data-dir={self.profile}", f"--window-size={width},{height}", "--remote-debugging-pipe",
        ]  # fmt: skip

        def fds() -> None:  # the protocol's pipes are the child's fd 3 (commands in) and 4 (replies out)
            high = [fcntl.fcntl(fd, fcntl.F_DUPFD, 10) for fd in (to_child, from_child)]  # out of 3 and 4's way
            os.dup2(high[0], 3)
            os.dup2(high[1], 4)

        self.process = subprocess.Popen(
            [binary, *flags, "about:blank"],
            preexec_fn=fds,
            pass_fds=(3, 4, to_child, from_child),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        os.close(to_child)
        os.close(from_child)
        self._buffer, self._id, self.events = b"", 0, []
        targets = self.call("Target.getTargets")["targetInfos"]
        page = next(t for t in targets if t["type"] == "page")
        self.session = self.call("Target.attachToTarget", targetId=page["targetId"], flatten=True)["sessionId"]
        self.call("Page.enable", session=True)
        self.call("Network.enable", session=True)
        self.call("Network.setCacheDisabled", session=True, cacheDisabled=True)  # every load reads the files
        self.call(
            "Emulation.setDeviceMetricsOverride", session=True, width=width, height=height, deviceScaleFactor=1,
            mobile=False,
        )  # fmt: skip

    def _message(self) -> dict:
        while b"\0" not in self._buffer:
            chunk = os.read(self._read, 1 << 20)
            if not chunk:
                raise RuntimeError("chromium closed the pipe")
            self._buffer += chunk
        raw, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(raw)

    def call(self, method: str, session: bool = False, **params) -> dict:
        self._id += 1
        message = {"id": self._id, "method": method, "params": params}
        if session:
            message["sessionId"] = self.session
        os.write(self._write, json.dumps(message).encode() + b"\0")
        while True:
            reply = self._message()
            if reply.get("id") == self._id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)

    def wait(self, event: str) -> None:
        while True:
            found = next((e for e in self.events if e.get("method") == event), None)
            if found is not None:
                self.events = [e for e in self.events if e is not found]
                return
            self.events.append(self._message())

    def evaluate(self, expression: str):
        result = self.call(
            "Runtime.evaluate", session=True, expression=expression, returnByValue=True, awaitPromise=True
        )
        return result["result"].get("value")

    def close(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=30)
        shutil.rmtree(self.profile, ignore_errors=True)


TIMING = """new Promise(done => requestAnimationFrame(() => setTimeout(() => done(JSON.stringify((() => {
  const nav = performance.getEntriesByType("navigation")[0];
  const paint = performance.getEntriesByType("paint").find(p => p.name === "first-contentful-paint");
  const images = Array.from(document.images);
  return {dom: nav.domContentLoadedEventEnd, load: nav.loadEventEnd, fcp: paint ? paint.startTime : null,
          rows: document.querySelectorAll("#rows tbody tr").length, images: images.length,
          fetched: images.filter(i => i.complete && i.naturalWidth > 0).length};
})())), 0)))"""  # read after the next frame, so the first paint is recorded

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
    browser = Browser(binary, *size)
    try:
        url = page.resolve().as_uri()
        browser.call("Page.addScriptToEvaluateOnNewDocument", session=True, source=FIRST_SCREEN)
        loads = []
        for _ in range(repeats):
            browser.call("Page.navigate", session=True, url="about:blank")
            browser.wait("Page.loadEventFired")
            browser.call("Page.navigate", session=True, url=url)
            browser.wait("Page.loadEventFired")
            loads.append(json.loads(browser.evaluate(TIMING)) | json.loads(browser.evaluate(VISIBLE)))
        if screenshot is not None:  # the page as it opens, every thumbnail in the window shown
            data = base64.b64decode(browser.call("Page.captureScreenshot", session=True, format="png")["data"])
            screenshot.parent.mkdir(parents=True, exist_ok=True)
            screenshot.write_bytes(data)
            small_png(screenshot)
        interaction = json.loads(browser.evaluate(INTERACT))
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
