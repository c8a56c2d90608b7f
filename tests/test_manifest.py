"""State-dict names, shapes and parameter counts equal the published model's."""

import json

import pytest
import torch
from conftest import DATA

from drsformer.archs import DRSformer, drsformer, drsformer_no_mefc

MANIFEST = json.loads((DATA / "official_state_dict_manifest.json").read_text())


@pytest.mark.parametrize("variant, factory", [("mefc", drsformer), ("no_mefc", drsformer_no_mefc)])
def test_state_dict_equals_manifest(variant: str, factory) -> None:
    expected = MANIFEST[variant]
    with torch.device("meta"):
        model = factory()
    state = {k: list(v.shape) for k, v in model.state_dict().items()}
    assert list(state) == list(expected["state_dict"])  # same keys, same order
    assert state == expected["state_dict"]
    assert sum(p.numel() for p in model.parameters()) == expected["num_parameters"]
    assert model.config == DRSformer(**expected["config"]).config


def test_paper_parameter_counts() -> None:
    with torch.device("meta"):
        assert sum(p.numel() for p in DRSformer().parameters()) == 33_655_424
        assert sum(p.numel() for p in DRSformer(mefc=False).parameters()) == 32_610_304
