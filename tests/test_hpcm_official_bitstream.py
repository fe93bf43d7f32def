"""HPCM's ``bitstream = "official"``: the byte layout of the official code, checked against a stream that the
official code wrote (``tests/data/hpcm_official_bitstream.*``, made by ``scripts/hpcm_official_bitstream.py``)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from common.errors import UserError
from common.models import build
from common.models.hpcm.ggm import ggm_scale_table
from common.models.hpcm.weights import fill_parity_weights
from scripts.hpcm_official_bitstream import TABLES, XHAT_CROP, fixture_image, table_digest

FIXTURE = Path(__file__).parent / "data" / "hpcm_official_bitstream"


@pytest.fixture(scope="module")
def official():
    stored = np.load(FIXTURE.with_suffix(".npz"))
    return {"y": stored["y_string"].tobytes(), "z": stored["z_string"].tobytes(),
            "shape": tuple(int(v) for v in stored["z_shape"]), "x_hat_crop": torch.from_numpy(stored["x_hat_crop"]),
            "info": json.loads(FIXTURE.with_suffix(".json").read_text())}


@pytest.fixture(scope="module")
def base64():
    """Our HPCM-Base with the fixture's weights, in float64 like the official run (see the script's docstring)."""
    model = fill_parity_weights(build("hpcm-base")).double().eval()
    model.bitstream = "official"
    return model


def test_official_tables_are_the_official_codes(base64, official):
    ggm = base64.entropy_estimation
    y_tables = ggm.build_official_tables(ggm_scale_table(dtype=torch.float32))
    z_tables = ggm.build_official_tables(base64.scales_hyper.flatten())
    tables = dict(zip(TABLES, y_tables + z_tables))
    assert table_digest(tables) == official["info"]["official_tables_sha256"]
    # ... and they are not the toolkit's (else this file would test nothing about the tables).
    toolkit_cdf, _, _ = ggm.build_tables(ggm_scale_table())
    assert not torch.equal(toolkit_cdf, y_tables[0])


def test_encoder_writes_the_official_bytes(base64, official):
    coded = base64.compress(fixture_image())
    assert tuple(coded["shape"]) == official["shape"]
    assert coded["strings"][0][0] == official["z"]
    assert coded["strings"][1][0] == official["y"]


def test_decoder_reads_the_official_bytes(base64, official):
    x = fixture_image()
    x_hat = base64.decompress([[official["z"]], [official["y"]]], official["shape"])["x_hat"]
    with torch.no_grad():
        forward = base64(x)["x_hat"].clamp(0, 1)
    assert torch.equal(x_hat, forward)
    # Ours against the official decoder's image: the float64 parity of the two codes (1e-5, see
    # ../shared/reference/README.md), plus the float32 rounding of the stored crop (6e-8 on values <= 1).
    crop = x_hat[0, :, XHAT_CROP, XHAT_CROP].float()
    assert (crop - official["x_hat_crop"]).abs().max() < 1e-5


@pytest.mark.parametrize("bitstream", ["toolkit", "official"])
def test_both_layouts_round_trip_a_batch(bitstream):
    model = fill_parity_weights(build("hpcm-tiny")).eval()  # latents with many bits, unlike the default init
    model.update()
    model.bitstream = bitstream
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    coded = model.compress(x)
    with torch.no_grad():
        forward = model(x)["x_hat"].clamp(0, 1)
    assert torch.equal(model.decompress(coded["strings"], coded["shape"])["x_hat"], forward)


def test_layouts_differ_and_do_not_mix():
    model = fill_parity_weights(build("hpcm-tiny")).eval()  # latents with many bits, unlike the default init
    model.update()
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    toolkit = model.compress(x)
    model.bitstream = "official"
    official = model.compress(x)
    assert toolkit["strings"][1] != official["strings"][1]
    with torch.no_grad():
        forward = model(x)["x_hat"].clamp(0, 1)
    # The toolkit's stream read as an official one decodes to something else (or fails in the coder).
    try:
        misread = model.decompress(toolkit["strings"], toolkit["shape"])["x_hat"]
    except (RuntimeError, ValueError):
        return
    assert not torch.equal(misread, forward)


def test_unknown_bitstream_format_is_refused():
    model = build("hpcm-tiny")
    with pytest.raises(UserError, match="unknown HPCM bitstream format 'offical'"):
        model.bitstream = "offical"
