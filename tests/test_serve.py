"""drsformer serve against a real uvicorn server on a free localhost port: uploads, progress, results equal to
``drsformer derain``'s bit for bit, refusals (corrupt, not an image, too many bytes or pixels, bad token, unknown
job), concurrency, cancelling, a client that leaves mid-upload, the storage bound and a clean stop; then the page
itself in headless Chromium (Debian's, driven by Playwright): drop, progress, before/after, download."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import save_tiny

from drsformer.cli import main
from drsformer.data.io import encode_image
from drsformer.serve.app import Limits, create_app
from drsformer.serve.jobs import JobQueue
from drsformer.serve.server import ServeSettings, load_models

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"  # Debian's; scripts/test.sh installs it


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Server:
    """A uvicorn server of the app in a thread of this process."""

    def __init__(self, root: Path, weights: Path, token: str | None = None, **limits: int) -> None:
        import uvicorn

        settings = ServeSettings(weights=[str(weights)], tile=24, device="cpu")
        self.models = load_models(settings)
        self.jobs = JobQueue(root / "jobs", limits.get("max_storage_bytes", 1 << 30))
        self.limits = Limits(limits.get("max_bytes", 1 << 22), limits.get("max_pixels", 1 << 20),
                             limits.get("max_storage_bytes", 1 << 30))  # fmt: skip
        self.port = free_port()
        config = uvicorn.Config(create_app(self.models, self.jobs, self.limits, token), host="127.0.0.1",
                                port=self.port, log_level="warning")  # fmt: skip
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert time.monotonic() < deadline, "the server did not start"
            time.sleep(0.05)
        self.url = f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(30)

    def request(self, method: str, path: str, body: bytes | None = None, headers: dict | None = None):
        """(status, parsed JSON or raw bytes)."""
        request = urllib.request.Request(self.url + path, data=body, method=method, headers=headers or {})
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                status, data, kind = response.status, response.read(), response.headers.get("content-type", "")
        except urllib.error.HTTPError as err:
            status, data, kind = err.code, err.read(), err.headers.get("content-type", "")
        return status, json.loads(data) if "json" in kind else data

    def upload(self, data: bytes, name: str = "photo.png", **params: str) -> tuple[int, dict]:
        query = urllib.parse.urlencode({"name": name, **params})
        return self.request("POST", f"/api/jobs?{query}", data)

    def wait(self, job_id: str, timeout: float = 120) -> dict:
        seen = []
        deadline = time.monotonic() + timeout
        while True:
            status, job = self.request("GET", f"/api/jobs/{job_id}")
            assert status == 200, job
            seen.append((job["done"], job["total"]))
            if job["state"] not in ("queued", "running"):
                job["progress_seen"] = seen
                return job
            assert time.monotonic() < deadline, job
            time.sleep(0.05)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return save_tiny(tmp_path_factory.mktemp("weights") / "tiny.pth", mefc=False)[0]


@pytest.fixture
def server(tmp_path, tiny):
    running = Server(tmp_path, tiny)
    yield running
    running.stop()


def photo(rng: np.random.Generator, height: int, width: int, channels: int = 3, dtype=np.uint8) -> np.ndarray:
    high = 256 if dtype == np.uint8 else 65536
    return rng.integers(0, high, (height, width, channels), dtype=dtype)


def derained_by_the_command(tmp_path: Path, weights: Path, name: str, data: bytes) -> bytes:
    folder = tmp_path / f"cli_{name}"
    (folder / "in").mkdir(parents=True)
    (folder / "in" / name).write_bytes(data)
    argv = ["derain", "--weights", str(weights), "-i", str(folder / "in"), "-o", str(folder / "out"), "--tile", "24"]
    assert main([*argv, "--quiet"]) == 0
    return (folder / "out" / name).read_bytes()


# ---------------------------------------------------------------- the API


@pytest.mark.parametrize(
    "name, image",
    [("rgb.png", (60, 70, 3, np.uint8)), ("rgba16.png", (33, 41, 4, np.uint16)), ("gray.jpg", (50, 64, 1, np.uint8))],
)
def test_a_photo_becomes_a_job_with_progress_and_the_derain_commands_result(server, tmp_path, tiny, name, image):
    height, width, channels, dtype = image
    array = photo(np.random.default_rng(1), height, width, channels, dtype)
    data = encode_image(array[..., 0] if channels == 1 else array, Path(name).suffix)
    status, job = server.upload(data, name)
    assert status == 201 and job["state"] == "queued" and (job["width"], job["height"]) == (width, height)
    finished = server.wait(job["id"])
    assert finished["state"] == "done" and finished["error"] is None
    assert finished["total"] > 1 and any(0 < done < total for done, total in finished["progress_seen"] if total)
    status, result = server.request("GET", f"/api/jobs/{job['id']}/result")
    assert status == 200 and result == derained_by_the_command(tmp_path, tiny, name, data)
    for which in ("input", "result"):
        status, png = server.request("GET", f"/api/jobs/{job['id']}/preview/{which}")
        assert status == 200 and png[:8] == b"\x89PNG\r\n\x1a\n"


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header announces ``width`` x ``height`` pixels, and no pixel data: a decompression bomb's shape."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(bytes(64))) + chunk(b"IEND", b"")


def test_refusals_are_one_line_and_the_server_goes_on(tmp_path, tiny) -> None:
    server = Server(tmp_path, tiny, max_bytes=50_000, max_pixels=64 * 64)
    try:
        good = encode_image(photo(np.random.default_rng(2), 40, 40), ".png")
        cases = [
            (b"just some text, not a picture", "notes.png", 415, "not an image"),
            (_png_header_only(100_000, 100_000), "bomb.png", 413, "more than this server's limit of 4,096"),
            (encode_image(photo(np.random.default_rng(3), 80, 80), ".png"), "big.png", 413, "6,400 pixels"),
            (bytes(60_000), "huge.png", 413, "more than this server's limit of 50,000"),
            (b"", "empty.png", 400, "empty upload"),
        ]
        for data, name, status, message in cases:
            got, body = server.upload(data, name)
            assert (got, message in body["error"], "\n" in body["error"]) == (status, True, False), (name, body)
        corrupt = good[: len(good) // 2]  # the header is fine, the pixels are cut: found when decoding
        status, job = server.upload(corrupt, "cut.png")
        assert status == 201
        failed = server.wait(job["id"])
        assert failed["state"] == "failed" and "cut.png" in failed["error"] and "\n" not in failed["error"]
        assert server.request("GET", "/api/jobs/nosuchjob")[0] == 404
        assert server.request("GET", "/api/jobs/nosuchjob/result")[0] == 404
        assert server.upload(good, "p.png", model="m9")[1]["error"] == "unknown model 'm9'"
        status, job = server.upload(good, "ok.png")  # and it still works
        assert status == 201 and server.wait(job["id"])["state"] == "done"
        assert not list((tmp_path / "jobs").glob("*/upload"))  # refused uploads left nothing
    finally:
        server.stop()


def test_a_token_is_required_when_set(tmp_path, tiny) -> None:
    server = Server(tmp_path, tiny, token="s3cret")
    try:
        assert server.request("GET", "/api/models")[0] == 401
        assert server.request("GET", "/api/models", headers={"X-Token": "wrong"})[0] == 401
        assert server.request("GET", "/api/models?token=s3cret")[0] == 200
        status, body = server.request("GET", "/api/jobs", headers={"X-Token": "s3cret"})
        assert status == 200 and body == {"jobs": []}
        assert server.request("GET", "/")[0] == 200  # the page itself holds no data
    finally:
        server.stop()


def test_a_host_other_than_local_needs_a_token(tiny) -> None:
    from drsformer.errors import ConfigError

    with pytest.raises(ConfigError, match="--host 0.0.0.0: other machines could reach this server; give --token"):
        ServeSettings(weights=[str(tiny)], host="0.0.0.0").check()
    ServeSettings(weights=[str(tiny)], host="0.0.0.0", token="x").check()


def test_concurrent_clients_each_get_their_photos(server, tmp_path, tiny) -> None:
    rng = np.random.default_rng(4)
    photos = {f"c{i}_{k}.png": encode_image(photo(rng, 30 + 7 * i, 50 + 5 * k), ".png") for i in range(3) for k in
              range(2)}  # fmt: skip
    ids: dict[str, str] = {}

    def client(names: list[str]) -> None:
        for name in names:
            status, job = server.upload(photos[name], name)
            assert status == 201
            ids[name] = job["id"]

    threads = [threading.Thread(target=client, args=([n for n in photos if n.startswith(f"c{i}_")],)) for i in
               range(3)]  # fmt: skip
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(ids) == len(photos)
    for name, job_id in ids.items():
        assert server.wait(job_id)["state"] == "done"
        result = server.request("GET", f"/api/jobs/{job_id}/result")[1]
        assert result == derained_by_the_command(tmp_path, tiny, name, photos[name])
    assert len(server.request("GET", "/api/jobs")[1]["jobs"]) == len(photos)


def test_cancelling_a_queued_and_a_running_job(server) -> None:
    big = encode_image(photo(np.random.default_rng(5), 160, 200), ".png")
    first = server.upload(big, "first.png", self_ensemble="true")[1]
    second = server.upload(big, "second.png")[1]
    status, cancelled = server.request("DELETE", f"/api/jobs/{second['id']}")
    assert status == 200 and cancelled["state"] == "cancelled"
    while server.request("GET", f"/api/jobs/{first['id']}")[1]["done"] == 0:
        time.sleep(0.02)
    server.request("DELETE", f"/api/jobs/{first['id']}")
    assert server.wait(first["id"])["state"] == "cancelled"
    assert not (server.jobs.root / first["id"]).exists() and not (server.jobs.root / second["id"]).exists()


def test_a_client_that_leaves_mid_upload_leaves_nothing(server) -> None:
    with socket.create_connection(("127.0.0.1", server.port)) as raw:
        raw.sendall(b"POST /api/jobs?name=a.png HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n" + bytes(30000))
        time.sleep(0.3)
    deadline = time.monotonic() + 10
    while any(server.jobs.root.iterdir()):
        assert time.monotonic() < deadline, list(server.jobs.root.iterdir())
        time.sleep(0.05)
    assert server.request("GET", "/api/jobs")[1] == {"jobs": []}


def test_the_oldest_results_go_when_the_folder_is_full_and_everything_goes_at_the_end(tmp_path, tiny) -> None:
    server = Server(tmp_path, tiny, max_storage_bytes=60_000)
    try:
        rng = np.random.default_rng(6)
        ids = []
        for k in range(3):
            status, job = server.upload(encode_image(photo(rng, 80, 100), ".png"), f"{k}.png")
            ids.append(job["id"])
            server.wait(job["id"])
        states = [server.request("GET", f"/api/jobs/{i}")[1]["state"] for i in ids]
        assert states[-1] == "done" and "expired" in states[:-1]
        assert server.request("GET", f"/api/jobs/{ids[0]}/result")[0] == 409
    finally:
        server.stop()
    assert not (tmp_path / "jobs").exists()


# ---------------------------------------------------------------- the page, in a real browser


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    assert Path(CHROMIUM).is_file(), "Chromium is missing: apt-get install chromium (.ci/run installs it)"
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
            "--disable-component-update", "--disable-sync",
        ])  # fmt: skip
        yield launched
        launched.close()


DROP = """async ([name, bytes]) => {
  const file = new File([new Uint8Array(bytes)], name, { type: "image/png" });
  const data = new DataTransfer();
  data.items.add(file);
  const zone = document.getElementById("drop");
  zone.dispatchEvent(new DragEvent("dragover", { dataTransfer: data, bubbles: true, cancelable: true }));
  zone.dispatchEvent(new DragEvent("drop", { dataTransfer: data, bubbles: true, cancelable: true }));
}"""


def test_the_page_derains_a_dropped_photo_and_downloads_the_result(server, browser, tmp_path, tiny) -> None:
    data = encode_image(photo(np.random.default_rng(7), 90, 120), ".png")
    page = browser.new_page(viewport={"width": 1000, "height": 900}, accept_downloads=True)
    try:
        page.goto(server.url + "/")
        page.wait_for_selector("body[data-ready]", state="attached")  # models listed, jobs fetched
        assert "DRSformer without MEFC" in page.inner_text("#model")
        page.evaluate(DROP, ["rain.png", list(data)])
        page.wait_for_selector("li.job[data-state=running], li.job[data-state=done]", timeout=60_000)
        page.wait_for_selector("li.job[data-state=done]", timeout=120_000)
        page.wait_for_selector("#viewer:not([hidden])")
        page.wait_for_function("document.getElementById('after').complete && document.getElementById('after')"
                               ".naturalWidth === 120")  # fmt: skip
        page.focus("#split")
        page.keyboard.press("Home")
        assert page.eval_on_selector("#after-clip", "e => e.style.clipPath") == "inset(0px 0px 0px 0%)"
        page.click("#zoom")
        assert page.get_attribute("#zoom", "aria-pressed") == "true"
        with page.expect_download() as info:
            page.click("#download")
        download = info.value
        assert download.suggested_filename == "rain.png"
        saved = tmp_path / "downloaded.png"
        download.save_as(saved)
        assert saved.read_bytes() == derained_by_the_command(tmp_path, tiny, "rain.png", data)
        page.screenshot(path=str(tmp_path / "page.png"), full_page=True)
        assert (tmp_path / "page.png").stat().st_size > 10_000
    finally:
        page.close()


def test_the_page_works_from_the_keyboard_and_on_a_phone(server, browser) -> None:
    page = browser.new_page(viewport={"width": 375, "height": 700})
    # Playwright asks Chromium to intercept file choosers when the first listener is added, without waiting for the
    # answer; a key pressed before that answer opens no chooser. So listen from before the page loads.
    choosers: list = []
    page.on("filechooser", lambda chooser: choosers.append(chooser))
    try:
        page.goto(server.url + "/")
        page.wait_for_selector("body[data-ready]", state="attached")  # models listed, jobs fetched
        focused = []
        for _ in range(5):
            page.keyboard.press("Tab")
            focused.append(page.evaluate("document.activeElement.id"))
        assert focused[:4] == ["model", "precision", "ensemble", "drop"]
        page.focus("#drop")
        with page.expect_file_chooser() as chooser:
            page.keyboard.press("Enter")
        assert chooser.value.is_multiple() and len(choosers) == 1
        assert page.evaluate("document.scrollingElement.scrollWidth") <= 375  # nothing wider than the phone
        bad = Path(__file__).with_name("data") / "authors_deraining.yml"
        page.set_input_files("#files", str(bad))
        page.wait_for_selector("li.job .error")
        assert "not an image" in page.inner_text("li.job .error")
    finally:
        page.close()


def test_serve_writes_the_result_folder_nowhere_else(tmp_path, tiny) -> None:
    """Results live under the job queue's own folder, which the server removes when it stops."""
    server = Server(tmp_path, tiny)
    status, job = server.upload(encode_image(photo(np.random.default_rng(8), 20, 20), ".png"), "x.png")
    server.wait(job["id"])
    assert (server.jobs.root / job["id"]).is_dir()
    server.stop()
    assert not server.jobs.root.exists() and sorted(p.name for p in tmp_path.iterdir()) == []


def test_the_weights_a_run_validated_are_the_default(tmp_path, capsys) -> None:
    """As every command that reads weights (tests/test_one_rule.py): EMA when the run validated it, or --params-key."""
    weights = save_tiny(tmp_path / "a.pth", mefc=False)[0]
    state = torch.load(weights, weights_only=True)["params"]
    ema = {k: v + 1 if v.is_floating_point() else v for k, v in state.items()}
    torch.save({"params": state, "params_ema": ema, "validated": "params_ema"}, tmp_path / "run.pth")
    chosen = load_models(ServeSettings(weights=[str(tmp_path / "run.pth")], tile=0, device="cpu"))[0].model
    assert "using params_ema: the weights this run validated" in capsys.readouterr().err
    assert torch.equal(chosen.state_dict()["patch_embed.proj.weight"], ema["patch_embed.proj.weight"])
    asked = ServeSettings(weights=[str(tmp_path / "run.pth")], tile=0, device="cpu", params_key="params")
    chosen = load_models(asked)[0].model
    assert torch.equal(chosen.state_dict()["patch_embed.proj.weight"], state["patch_embed.proj.weight"])


def test_ctrl_c_cancels_the_running_job_and_leaves_nothing(tmp_path, tiny) -> None:
    """The command itself, in its own process: SIGINT while a job runs ends it with status 0, the job cancelled
    and the temporary folder gone."""
    port = free_port()
    temporary = tmp_path / "tmp"
    temporary.mkdir()
    command = [sys.executable, "-m", "drsformer", "serve", "--weights", str(tiny), "--port", str(port),
               "--tile", "24", "--device", "cpu"]  # fmt: skip
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               env={**os.environ, "TMPDIR": str(temporary)})  # fmt: skip
    try:
        assert process.stdout is not None
        printed = [process.stdout.readline() for _ in range(2)]
        assert printed[1].startswith(f"drsformer serve: open http://127.0.0.1:{port}/"), printed
        client = Server.__new__(Server)
        client.url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                client.request("GET", "/api/models")
                break
            except urllib.error.URLError:
                assert time.monotonic() < deadline
                time.sleep(0.05)
        big = encode_image(photo(np.random.default_rng(9), 160, 200), ".png")
        job = client.upload(big, "big.png", self_ensemble="true")[1]
        while client.request("GET", f"/api/jobs/{job['id']}")[1]["done"] == 0:
            time.sleep(0.02)
        process.send_signal(signal.SIGINT)
        out, _ = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == 0, out
    assert "stopped (1 unfinished job cancelled; its temporary folder removed)" in out
    assert list(temporary.iterdir()) == []


def test_a_running_job_is_cancelled_from_the_keyboard(server, browser) -> None:
    """The job list is rebuilt on every poll; the focus stays on the job's button, and Enter cancels it."""
    page = browser.new_page(viewport={"width": 1000, "height": 900})
    try:
        page.goto(server.url + "/")
        page.wait_for_selector("body[data-ready]", state="attached")  # models listed, jobs fetched
        page.check("#ensemble")
        data = encode_image(photo(np.random.default_rng(10), 200, 240), ".png")
        page.evaluate(DROP, ["slow.png", list(data)])
        page.wait_for_selector("li.job[data-state=running] button[data-action=cancel]", timeout=60_000)
        page.focus("li.job button[data-action=cancel]")
        page.wait_for_timeout(1200)  # two polls rebuild the list
        assert page.evaluate("document.activeElement.dataset.action") == "cancel"
        page.keyboard.press("Enter")
        page.wait_for_selector("li.job[data-state=cancelled]", timeout=30_000)
    finally:
        page.close()


def test_out_of_memory_fails_the_job_in_one_line_and_the_server_goes_on(server, monkeypatch) -> None:
    """The CPU allocator's own failure, raised from inside the model's first layer norm."""
    layer_norm = torch.nn.functional.layer_norm

    def no_memory(*args, **kwargs):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:118] DefaultCPUAllocator: can't allocate memory: you "
                           "tried to allocate 123456789 bytes. Error code 12 (Cannot allocate memory)")  # fmt: skip

    data = encode_image(photo(np.random.default_rng(11), 40, 50), ".png")
    monkeypatch.setattr(torch.nn.functional, "layer_norm", no_memory)
    job = server.wait(server.upload(data, "big.png")[1]["id"])
    assert job["state"] == "failed" and "\n" not in job["error"]
    assert job["error"].startswith("big.png: out of memory on cpu restoring 40x50 pixels; use a smaller --tile")
    monkeypatch.setattr(torch.nn.functional, "layer_norm", layer_norm)
    assert server.wait(server.upload(data, "small.png")[1]["id"])["state"] == "done"
