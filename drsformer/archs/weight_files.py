"""Reading and writing weight files: PyTorch's ``.pth`` (``torch.load(weights_only=True)``, checksums verified)
and safetensors, with errors that name the file. Which weights inside a file to use is
:mod:`drsformer.archs.checkpoint`'s business.

safetensors files hold one flat set of named tensors and string metadata, no code.

Keys are the published state-dict layout (``patch_embed.proj.weight`` ...), exactly what
``torch.load(published)['params']`` holds, so a file anyone wrote with ``safetensors.torch.save_file(params, path)``
loads. The files we write also carry, in the header's ``__metadata__``:

- ``format``: ``pt``, the value PyTorch tools expect;
- ``drsformer.params_key``: which weights the file holds, ``params`` or ``params_ema`` (the ones a run validated);
- ``drsformer.sha256``: the hex SHA-256 that :func:`weights_digest` computes over the other metadata entries and
  every tensor's name, dtype, shape and bytes. safetensors has no checksum of its own; this one makes a flipped bit
  an error instead of different weights. Files without it (anyone else's) load unchecked.

Reading gives a dict like a ``.pth`` file's: ``{params_key: state_dict}``, plus ``validated: params_key`` when the
metadata names the weights (``params`` otherwise), and ``architecture`` (the network's constructor arguments)
when the metadata holds ``drsformer.architecture``.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import re
import warnings
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any, BinaryIO

import torch
from torch import Tensor

from ..errors import CheckpointError
from ..files import write_atomic
from ..optional import require

WRAPPER_KEYS = ("params", "params_ema", "state_dict", "model", "net_g")  # where checkpoints keep their weights
VALIDATED_KEY = "validated"  # in our training runs' weight files: the weights the run validated
ARCHITECTURE_KEY = "architecture"  # in our weight files: the network's constructor arguments
ARCHITECTURE_ENTRY = "drsformer.architecture"  # the same in a safetensors file's metadata, as JSON
SUFFIX = ".safetensors"
WEIGHT_SUFFIXES = (".pth", SUFFIX)  # a folder's weight files: a run's models/ holds either, by logger.weights_format
PARAMS_KEY_ENTRY = "drsformer.params_key"
DIGEST_ENTRY = "drsformer.sha256"


def is_safetensors(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a safetensors file: by its suffix, or (whatever its name) by its first bytes."""
    if os.fspath(path).lower().endswith(SUFFIX):
        return True
    try:
        with open(path, "rb") as f:
            return looks_like_safetensors(f.read(9), os.fstat(f.fileno()).st_size)
    except OSError:  # unreadable: the PyTorch reader reports it, naming the file
        return False


def looks_like_safetensors(head: bytes, file_size: int | None = None) -> bool:
    """A safetensors file starts with its header's length (8 bytes, little-endian, within the file when its size
    is given) and the header's ``{``."""
    if len(head) < 9 or head[8:9] != b"{":
        return False
    return file_size is None or int.from_bytes(head[:8], "little") <= file_size - 8


def read_safetensors(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """The weights in a safetensors file as ``{params_key: state_dict}`` (see the module's description); a file
    that does not parse, or whose checksum does not match, is a one-line :class:`CheckpointError`."""
    name = os.fspath(path)
    safetensors = require("safetensors", "reading .safetensors weights")
    try:
        with safetensors.safe_open(name, framework="pt", device="cpu") as f:
            metadata = f.metadata() or {}
            # Copies: the parser maps the file, and a file rewritten in place would change (or, cut, crash) them.
            state = {key: f.get_tensor(key).clone() for key in f.keys()}
    except Exception as err:  # the parser's SafetensorError, torch's errors on dtypes it lacks: the file's fault
        raise CheckpointError(
            f"{name}: unreadable safetensors file, truncated or corrupt ({type(err).__name__}: {first_line(str(err))})"
        ) from None
    expected = metadata.get(DIGEST_ENTRY)
    if expected is not None and weights_digest(state, metadata) != expected:
        raise CheckpointError(f"{name}: corrupt, its tensor data does not match the checksum it was saved with")
    if torch.device(map_location) != torch.device("cpu"):
        state = {key: tensor.to(map_location) for key, tensor in state.items()}
    params_key = metadata.get(PARAMS_KEY_ENTRY)
    if params_key is None:
        return {"params": state}
    _check_params_key(params_key, name)
    out: dict[str, Any] = {params_key: state, VALIDATED_KEY: params_key}
    if ARCHITECTURE_ENTRY in metadata:
        try:
            out[ARCHITECTURE_KEY] = json.loads(metadata[ARCHITECTURE_ENTRY])
        except json.JSONDecodeError:
            raise CheckpointError(f"{name}: its {ARCHITECTURE_ENTRY} metadata is not JSON") from None
    return out


def save_safetensors(
    path: str | os.PathLike,
    state: Mapping[str, Tensor],
    params_key: str = "params",
    metadata: Mapping[str, str] | None = None,
) -> Path:
    """Writes ``state`` (one state dict) to ``path`` atomically, as contiguous CPU tensors, with ``metadata`` plus
    ``format``, ``drsformer.params_key`` (``params_key``) and ``drsformer.sha256``, which take precedence."""
    path = Path(path)
    require("safetensors", "writing .safetensors weights")
    from safetensors.torch import save as encode

    _check_params_key(params_key, str(path))
    tensors = {}
    for key, value in state.items():
        if not isinstance(value, Tensor) or value.layout != torch.strided:
            raise CheckpointError(f"{path}: cannot save {key!r}, a {type(value).__name__} and not a dense tensor")
        tensors[key] = value.detach().to("cpu", copy=True).contiguous()  # copies: no shared storage
    entries = {**(metadata or {}), "format": "pt", PARAMS_KEY_ENTRY: params_key}
    for key, text in entries.items():
        if not isinstance(key, str) or not isinstance(text, str):
            raise CheckpointError(f"{path}: metadata entry {key!r} must map a string to a string, got {text!r:.40}")
    entries[DIGEST_ENTRY] = weights_digest(tensors, entries)
    data = encode(tensors, metadata=entries)
    write_atomic(path, lambda f: f.write(data))
    return path


def weights_digest(state: Mapping[str, Tensor], metadata: Mapping[str, str]) -> str:
    """Hex SHA-256 over ``metadata`` (without its own entry) and, in name order, each tensor's name, dtype, shape
    and bytes: independent of how a writer lays the tensors out in the file."""
    digest = hashlib.sha256()
    others = {k: v for k, v in metadata.items() if k != DIGEST_ENTRY}
    digest.update(json.dumps(others, sort_keys=True).encode())
    for name in sorted(state):
        tensor = state[name].detach().to("cpu").contiguous()
        digest.update(json.dumps([name, str(tensor.dtype), list(tensor.shape)]).encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().data)  # the bytes, as a memoryview
    return digest.hexdigest()


def _check_params_key(params_key: Any, name: str) -> None:
    if params_key not in WRAPPER_KEYS:
        raise CheckpointError(
            f"{name}: {PARAMS_KEY_ENTRY} is {params_key!r:.40}, expected one of {', '.join(WRAPPER_KEYS)}"
        )


def read_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> Any:
    """``torch.load(path, weights_only=True)``, or for a safetensors file (by its ``.safetensors`` suffix or its
    first bytes) :func:`read_safetensors`, which gives ``{'params': ...}`` alike; any
    file that cannot be parsed is a one-line :class:`CheckpointError`.

    Files in PyTorch's zip format are checked against their CRC-32 checksums first, and safetensors files we wrote
    against their SHA-256, so a flipped bit in the tensor data is reported instead of loaded as different weights.
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        raise CheckpointError(f"{path}: is a folder, not a checkpoint file")
    if not os.path.isfile(path):
        raise CheckpointError(f"{path}: no such file")
    if os.path.getsize(path) == 0:
        raise CheckpointError(f"{path}: empty file")
    if is_safetensors(path):
        return read_safetensors(path, map_location)
    return _checked_load(path, path, map_location)


def read_checkpoint_bytes(data: bytes, name: str, map_location: str | torch.device = "cpu") -> Any:
    """:func:`read_checkpoint` of a file's content (received from another process); errors name ``name``."""
    if not data:
        raise CheckpointError(f"{name}: empty file")
    return _checked_load(lambda: io.BytesIO(data), name, map_location)


def _checked_load(source: Any, name: str, map_location: str | torch.device) -> Any:
    """``source``: a path, or a factory of fresh file objects over the same bytes."""
    opened = source if isinstance(source, str) else None
    verify_zip_checksums(opened or source(), name)
    try:
        with warnings.catch_warnings():
            for noise in ("Detected pickle protocol", "Validating sparse tensor"):  # random bytes, sparse tensors
                warnings.filterwarnings("ignore", message=noise, category=UserWarning)
            return torch.load(opened or source(), map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        raise CheckpointError(_unpickling_message(name, str(err))) from None
    except Exception as err:  # torch's zip reader and unpickler: any failure to parse is the file's fault
        raise CheckpointError(
            f"{name}: unreadable, the file is truncated or corrupt ({type(err).__name__}: {first_line(str(err))})"
        ) from None


def verify_zip_checksums(source: str | BinaryIO, name: str | None = None) -> None:
    """Reads every member of a zip-format checkpoint (a path or a seekable file object), which checks its
    CRC-32; legacy files pass unchecked."""
    name = name or (source if isinstance(source, str) else str(getattr(source, "name", "checkpoint data")))
    member = "the zip directory"
    try:
        if not zipfile.is_zipfile(source):
            if _starts_like_zip(source):  # a zip archive whose directory, at the end, is missing
                raise CheckpointError(f"{name}: unreadable, the file is truncated (its zip directory is missing)")
            return
        with zipfile.ZipFile(source) as archive:
            for info in archive.infolist():
                member = info.filename
                with archive.open(info) as stream:
                    while stream.read(1 << 22):
                        pass
    except CheckpointError:
        raise
    except Exception as err:  # zipfile and zlib: BadZipFile, CRC mismatch, struct.error, EOFError, OSError ...
        raise CheckpointError(
            f"{name}: unreadable, the file is truncated or corrupt ({member}: {first_line(str(err))})"
        ) from None


def _starts_like_zip(source: str | BinaryIO) -> bool:
    if isinstance(source, str):
        with open(source, "rb") as f:
            return f.read(4) == b"PK\x03\x04"
    source.seek(0)
    return source.read(4) == b"PK\x03\x04"


def _unpickling_message(path: str, text: str) -> str:
    culprit = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text)
    if culprit:
        return (
            f"{path}: refused, the file contains pickled code or objects (it references {culprit.group(1)}), "
            "not just tensors; only weights are loaded (torch.load weights_only=True). Re-save it as "
            "torch.save({'params': model.state_dict()}, path) from a trusted environment."
        )
    detail = re.search(r"WeightsUnpickler error:\s*(.+)", text)
    reason = detail.group(1).strip() if detail else first_line(text)
    return f"{path}: not a PyTorch checkpoint, or a corrupt one (unpickling failed: {first_line(reason)})"


def first_line(text: str, limit: int = 160) -> str:
    line = text.strip().splitlines()[0] if text.strip() else "no details"
    return line if len(line) <= limit else line[: limit - 3] + "..."
