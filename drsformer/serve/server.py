"""Running the page's server: load each weights file once, start the worker, serve with uvicorn, and leave
nothing behind (the temporary folder is removed at exit, Ctrl-C included)."""

from __future__ import annotations

import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from ..archs import architecture_name
from ..archs.weight_files import WEIGHT_SUFFIXES
from ..devices import resolve_device
from ..errors import ConfigError, MissingPathError
from ..optional import require
from ..photos import load_pytorch
from .app import Limits, create_app
from .jobs import JobQueue, Model

LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")


@dataclass
class ServeSettings:
    weights: list[str]
    params_key: str | None = None  # None: the weights the run validated (EMA when saved), as derain
    host: str = "127.0.0.1"
    port: int = 8000
    device: str | None = None
    tile: int | str = "auto"
    precision: str = "fp32"
    max_pixels: int = 40_000_000
    max_bytes: int = 100 * 2**20
    max_storage_bytes: int = 4 * 2**30
    token: str | None = None
    jpeg_quality: int = 95
    log_level: str = "warning"
    temporary: Path | None = None  # the parent of the server's temporary folder (default: the system's)
    notes: list[str] = field(default_factory=list)

    def check(self) -> ServeSettings:
        if not self.weights:
            raise ConfigError("--weights: give a checkpoint, several, or a folder of them")
        if self.host not in LOCAL_HOSTS and not self.token:
            raise ConfigError(
                f"--host {self.host}: other machines could reach this server; give --token SECRET too (or keep the "
                "default 127.0.0.1 and reach it through an SSH tunnel)"
            )
        for key, value in (("--max-pixels", self.max_pixels), ("--max-bytes", self.max_bytes), ("--port", self.port)):
            if value < 1:
                raise ConfigError(f"{key} must be positive, got {value}")
        return self


def weight_files(entries: list[str]) -> list[Path]:
    """Each ``--weights`` entry: a file, or the checkpoints directly inside a folder (a run's ``models/``)."""
    files: list[Path] = []
    for entry in entries:
        path = Path(entry)
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.suffix in WEIGHT_SUFFIXES and p.is_file())
            if not found:
                raise MissingPathError(f"--weights {path}: a folder without .pth or .safetensors files")
            files += found
        elif path.is_file():
            files.append(path)
        else:
            raise MissingPathError(f"--weights {path}: no such file or folder")
    return list(dict.fromkeys(files))


def load_models(settings: ServeSettings) -> list[Model]:
    """Every weights file, loaded once on the device, with the tile it runs with (``auto`` resolved per model)."""
    device = resolve_device(settings.device)
    models = []
    for index, path in enumerate(weight_files(settings.weights)):
        model, inference = load_pytorch(
            str(path), settings.params_key, device, settings.tile, settings.precision, self_ensemble=False
        )
        name = path.name if path.parent.name in ("", ".") else f"{path.parent.name}/{path.name}"
        models.append(Model(f"m{index}", name, architecture_name(getattr(model, "config", {})), model, inference))
    return models


def serve(settings: ServeSettings) -> None:
    """Serves until interrupted (Ctrl-C finishes with the running job cancelled and the files removed)."""
    settings.check()
    uvicorn = require("uvicorn", "drsformer serve")
    models = load_models(settings)
    root = Path(tempfile.mkdtemp(prefix="drsformer-serve-", dir=settings.temporary))
    jobs = JobQueue(root, settings.max_storage_bytes, settings.jpeg_quality)
    limits = Limits(settings.max_bytes, settings.max_pixels, settings.max_storage_bytes)
    app = create_app(models, jobs, limits, settings.token)
    if settings.host not in LOCAL_HOSTS:
        print(
            f"warning: serving on {settings.host}: anyone who can reach this machine and has the token can use it; "
            "photos and results are kept in its temporary folder until it stops",
            file=sys.stderr,
        )
    host = f"[{settings.host}]" if ":" in settings.host else settings.host
    url = f"http://{host}:{settings.port}/" + (f"?token={settings.token}" if settings.token else "")
    for model in models:
        print(f"model {model.id}: {model.name} ({model.variant}, tile {model.settings.tile or 'whole image'})")
    print(f"drsformer serve: open {url}  (Ctrl-C stops it)", flush=True)
    config = uvicorn.Config(app, host=settings.host, port=settings.port, log_level=settings.log_level)
    try:
        uvicorn.Server(config).run()  # on Ctrl-C it shuts down gracefully, then raises the signal again
    except KeyboardInterrupt:
        pass  # Ctrl-C is how this command ends
    finally:
        cancelled = jobs.stop()
    print(f"drsformer serve: stopped ({cancelled} unfinished job{'s' * (cancelled != 1)} cancelled; its temporary "
          "folder removed)")  # fmt: skip
