"""``drsformer serve`` under load: several clients upload rainy photos of mixed sizes at once; prints a table.

    python scripts/serve_load.py --weights /tmp/demo/run/models/net_g_latest.pth
    python scripts/serve_load.py --weights W --clients 4 --photos 20 --screenshot docs/images/serve.png

The server runs as its own process (``python -m drsformer serve``), so its resident memory is its own: sampled
every 100 ms from ``/proc``. Each client uploads its photos back to back, then polls its jobs until every one has
finished and downloads the results. Meanwhile a probe asks for the page and for the job list (what the page polls)
every 200 ms and records how long each answer took. Afterwards ``drsformer derain`` runs on the same photos with
the same weights and tile, and every downloaded result must equal its output byte for byte. Ctrl-C (SIGINT) then
stops the server, which must exit cleanly and leave its temporary folder removed.

Photos are crops of scikit-image's bundled photos, resized to pixel counts spread log-uniformly from 64 x 64 to
2 MP (both ends included), with synthetic rain, half PNG and half JPEG.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from drsformer.data.io import write_image
from drsformer.data.synth_rain import add_rain
from drsformer.demo.data import bundled_photo

SOURCES = ("astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg", "motorcycle_left.png", "brick.png")
ASPECTS = (4 / 3, 3 / 2, 1.0, 3 / 4, 16 / 9)


def make_photos(folder: Path, count: int, seed: int, smallest: int = 64 * 64, largest: int = 2_000_000) -> list[Path]:
    """``count`` rainy photos whose pixel counts run log-uniformly from ``smallest`` to ``largest``."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    pixels = np.exp(np.linspace(np.log(smallest), np.log(largest), count))
    rng.shuffle(pixels)
    paths = []
    for i, target in enumerate(pixels):
        aspect = 1.0 if target == smallest else ASPECTS[i % len(ASPECTS)]
        width = max(8, round(np.sqrt(target * aspect)))
        height = max(8, round(target / width))
        source = bundled_photo(SOURCES[i % len(SOURCES)])
        scale = max(height / source.shape[0], width / source.shape[1]) * rng.uniform(1.0, 1.3)
        big = cv2.resize(
            source, (max(width, round(source.shape[1] * scale)), max(height, round(source.shape[0] * scale)))
        )
        y, x = rng.integers(0, big.shape[0] - height + 1), rng.integers(0, big.shape[1] - width + 1)
        rainy = add_rain(np.ascontiguousarray(big[y : y + height, x : x + width]), rng, ("medium", "heavy")[i % 2])
        path = folder / f"photo_{i:03d}_{width}x{height}{'.png' if i % 2 == 0 else '.jpg'}"
        write_image(path, rainy)
        paths.append(path)
    return paths


@dataclass
class Samples:
    rss: list[tuple[float, int]] = field(default_factory=list)  # (seconds since start, bytes)
    page_ms: list[float] = field(default_factory=list)
    jobs_ms: list[float] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)


def rss_of(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:"))


def get(url: str, timeout: float = 60) -> tuple[int, bytes]:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return response.status, response.read()


def sample_memory(pid: int, samples: Samples, started: float) -> None:
    while not samples.stop.wait(0.1):
        samples.rss.append((time.perf_counter() - started, rss_of(pid)))


def probe(url: str, samples: Samples) -> None:
    while not samples.stop.wait(0.2):
        for path, into in (("/", samples.page_ms), ("/api/jobs", samples.jobs_ms)):
            begun = time.perf_counter()
            get(url + path)
            into.append((time.perf_counter() - begun) * 1000)


def client(url: str, photos: list[Path], results: Path, outcome: dict[str, str]) -> None:
    """Uploads ``photos`` back to back, waits for every job, downloads each result."""
    ids = {}
    for path in photos:
        query = urllib.parse.urlencode({"name": path.name})
        request = urllib.request.Request(f"{url}/api/jobs?{query}", data=path.read_bytes(), method="POST")
        with urllib.request.urlopen(request, timeout=120) as response:
            ids[json.loads(response.read())["id"]] = path
    waiting = dict(ids)
    while waiting:
        time.sleep(0.25)
        for job_id, path in list(waiting.items()):
            job = json.loads(get(f"{url}/api/jobs/{job_id}")[1])
            if job["state"] in ("queued", "running"):
                continue
            del waiting[job_id]
            outcome[path.name] = job["state"] if job["state"] != "failed" else f"failed: {job['error']}"
            if job["state"] == "done":
                (results / path.name).write_bytes(get(f"{url}/api/jobs/{job_id}/result")[1])


def start_server(weights: str, port: int, tile: str, temporary: Path) -> tuple[subprocess.Popen, str]:
    env = {**os.environ, "TMPDIR": str(temporary)}
    command = [sys.executable, "-m", "drsformer", "serve", "--weights", weights, "--port", str(port), "--tile", tile]
    server = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env=env)
    assert server.stdout is not None
    for line in server.stdout:
        found = re.search(r"open (http://\S+)", line)
        if found:
            url = found.group(1).rstrip("/")
            deadline = time.monotonic() + 60
            while True:  # the URL is printed just before uvicorn binds
                try:
                    get(url + "/api/models", timeout=5)
                    return server, url
                except OSError:
                    if time.monotonic() > deadline or server.poll() is not None:
                        raise
                    time.sleep(0.1)
    raise SystemExit(f"the server exited with {server.wait()} before printing its URL")


def screenshot(url: str, photos: list[Path], target: Path) -> None:
    """The page of a fresh server after ``photos`` were added, the first one open, the slider at the middle."""
    from playwright.sync_api import sync_playwright
    from report_browser_check import CHROMIUM_FLAGS, small_png

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=shutil.which("chromium"), args=CHROMIUM_FLAGS)
        page = browser.new_page(viewport={"width": 1100, "height": 1000})
        page.goto(url + "/")
        page.wait_for_selector("body[data-ready]", state="attached")  # models listed, jobs fetched
        page.set_input_files("#files", [str(p) for p in photos])
        page.wait_for_function(f"document.querySelectorAll('li.job[data-state=done]').length === {len(photos)}",
                               timeout=600_000)  # fmt: skip
        page.click(f"li.job:has-text('{photos[0].name}') button[data-action=view]")
        page.wait_for_function("document.getElementById('after').complete && document.getElementById('after')"
                               ".src.includes(document.querySelector('li.job.selected').dataset.job)")  # fmt: skip
        target.parent.mkdir(parents=True, exist_ok=True)
        page.evaluate("window.scrollTo(0, 0)")  # the View button scrolled the list into sight
        page.screenshot(path=str(target), full_page=True)
        browser.close()
    small_png(target)


def pixels_of(photo: Path) -> int:
    width, height = photo.stem.split("_")[-1].split("x")
    return int(width) * int(height)


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", required=True)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--photos", type=int, default=20, help="photos each client uploads")
    parser.add_argument("--tile", default="auto")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--screenshot", type=Path, default=None, help="also save the page with a result, here")
    args = parser.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="serve-load-"))
    photos = make_photos(work / "photos", args.clients * args.photos, args.seed)
    results, temporary = work / "results", work / "server-tmp"
    results.mkdir()
    temporary.mkdir()
    server, url = start_server(args.weights, args.port, args.tile, temporary)
    samples, started = Samples(), time.perf_counter()
    idle_rss = rss_of(server.pid)
    watchers = [threading.Thread(target=sample_memory, args=(server.pid, samples, started)),
                threading.Thread(target=probe, args=(url, samples))]  # fmt: skip
    outcome: dict[str, str] = {}
    clients = [threading.Thread(target=client, args=(url, photos[k :: args.clients], results, outcome))
               for k in range(args.clients)]  # fmt: skip
    for thread in watchers + clients:
        thread.start()
    for thread in clients:
        thread.join()
    wall = time.perf_counter() - started
    samples.stop.set()
    for thread in watchers:
        thread.join()
    after_rss = rss_of(server.pid)
    stopping = time.perf_counter()
    server.send_signal(signal.SIGINT)
    exit_code = server.wait(60)
    stop_seconds = time.perf_counter() - stopping
    left_behind = sorted(p.name for p in temporary.iterdir())

    reference = work / "derain"
    subprocess.run([sys.executable, "-m", "drsformer", "derain", "--weights", args.weights, "-i", str(work / "photos"),
                    "-o", str(reference), "--tile", args.tile, "--quiet"], check=True)  # fmt: skip
    if args.screenshot is not None:  # a fresh server, so the page shows a few jobs, not the load's
        shown = sorted(photos, key=lambda p: abs(pixels_of(p) - 400_000))[:3]
        server, url = start_server(args.weights, args.port, args.tile, temporary)
        screenshot(url, shown, args.screenshot)
        server.send_signal(signal.SIGINT)
        server.wait(60)
    equal = [p.name for p in photos if (results / p.name).is_file()
             and (results / p.name).read_bytes() == (reference / p.name).read_bytes()]  # fmt: skip
    done = [name for name, state in outcome.items() if state == "done"]
    peak = max(r for _, r in samples.rss)
    sizes = [pixels_of(p) for p in photos]

    rows = [
        ("photos uploaded", f"{len(photos)} by {args.clients} clients at once, {min(sizes):,} to {max(sizes):,} "
                            f"pixels ({sum(sizes) / 1e6:.1f} MP in all)"),
        ("jobs done", f"{len(done)} of {len(photos)}; lost {len(photos) - len(outcome)}; failed "
                      f"{sum(s.startswith('failed') for s in outcome.values())}"),
        ("results equal to drsformer derain's, byte for byte", f"{len(equal)} of {len(photos)}"),
        ("wall time, first upload to last download", f"{wall:.1f} s ({sum(sizes) / 1e6 / wall:.2f} MP/s)"),
        ("server RSS: idle with the model loaded / peak / after the load",
         f"{idle_rss / 2**20:.0f} / {peak / 2**20:.0f} / {after_rss / 2**20:.0f} MiB"),
        ("GET / (the page): median / p99 / max", f"{statistics.median(samples.page_ms):.1f} / "
         f"{percentile(samples.page_ms, 99):.1f} / {max(samples.page_ms):.1f} ms ({len(samples.page_ms)} requests)"),
        ("GET /api/jobs (what the page polls): median / p99 / max", f"{statistics.median(samples.jobs_ms):.1f} / "
         f"{percentile(samples.jobs_ms, 99):.1f} / {max(samples.jobs_ms):.1f} ms ({len(samples.jobs_ms)} requests)"),
        ("Ctrl-C: exit code, seconds, files left in its temporary folder", f"{exit_code}, {stop_seconds:.1f} s, "
                                                                           f"{len(left_behind)}"),
    ]  # fmt: skip
    print("| measure | figure |\n|---|---|")
    for name, value in rows:
        print(f"| {name} | {value} |")
    failures = {name: state for name, state in outcome.items() if state != "done"}
    if failures:
        print(json.dumps(failures, indent=1), file=sys.stderr)
    shutil.rmtree(work, ignore_errors=True)
    ok = (
        len(equal) == len(photos)
        and exit_code == 0
        and not left_behind
        and max(samples.page_ms + samples.jobs_ms) < 200
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
