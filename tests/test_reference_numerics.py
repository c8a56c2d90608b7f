"""The model reproduces the published implementation's outputs (fixtures made by running the authors' code)."""

import pytest
import torch
from conftest import load_reference

from drsformer.archs import DRSformer


@pytest.mark.parametrize("impl", ["reference", "fast"])
@pytest.mark.parametrize("name", ["small_mefc", "small_no_mefc"])
def test_matches_published_outputs(name: str, impl: str) -> None:
    ref = load_reference(name)
    assert ref["config"]["mefc"] == (name == "small_mefc")
    model = DRSformer(**ref["config"], impl=impl).eval()
    model.load_state_dict(ref["params"], strict=True)
    with torch.no_grad():
        out32 = model(ref["input"])
        out64 = model.double()(ref["input"].double())
    assert out32.dtype == torch.float32 and out64.dtype == torch.float64
    assert (out64 - ref["output_float64"]).abs().max().item() < 1e-8
    assert (out32 - ref["output_float32"]).abs().max().item() < 1e-4
