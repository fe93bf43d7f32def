"""common.rd against the spec's reference BD numbers and a hand-written VCEG-M33 formula; baselines loader."""
from __future__ import annotations

import csv
import json
import math
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

from baselines import published_curve, published_datasets, published_names
from common import rd
from common.errors import UserError

REPO = Path(__file__).resolve().parents[1]


def kodak(name: str) -> rd.RDCurve:
    return published_curve("kodak", name)


def vceg_m33_bd_rate(rate_a, psnr_a, rate_t, psnr_t) -> float:
    """Bjøntegaard 2001: cubic fit of ln(rate) over PSNR, averaged over the common PSNR interval."""
    lo = max(min(psnr_a), min(psnr_t))
    hi = min(max(psnr_a), max(psnr_t))
    integrals = []
    for rate, psnr in ((rate_a, psnr_a), (rate_t, psnr_t)):
        antiderivative = np.polyint(np.polyfit(psnr, np.log(rate), 3))
        integrals.append(np.polyval(antiderivative, hi) - np.polyval(antiderivative, lo))
    return (math.exp((integrals[1] - integrals[0]) / (hi - lo)) - 1) * 100


def vceg_m33_bd_psnr(rate_a, psnr_a, rate_t, psnr_t) -> float:
    lo = max(min(np.log(rate_a)), min(np.log(rate_t)))
    hi = min(max(np.log(rate_a)), max(np.log(rate_t)))
    integrals = []
    for rate, psnr in ((rate_a, psnr_a), (rate_t, psnr_t)):
        antiderivative = np.polyint(np.polyfit(np.log(rate), psnr, 3))
        integrals.append(np.polyval(antiderivative, hi) - np.polyval(antiderivative, lo))
    return (integrals[1] - integrals[0]) / (hi - lo)


# (anchor, test, metric key, {method: expected BD-rate %}, BD-quality cubic dB) from compressai_facts.md §5.
REFERENCE = [
    ("compressai-bmshj2018-factorized_mse_cuda", "compressai-bmshj2018-hyperprior_mse_cuda", "psnr-rgb",
     {"cubic": -21.1492, "akima": -21.1075, "pchip": -21.1303}, 1.1510),
    ("compressai-bmshj2018-factorized_ms-ssim_cuda", "compressai-bmshj2018-hyperprior_ms-ssim_cuda",
     "ms-ssim-db-rgb", {"cubic": -14.4623, "akima": -14.3111, "pchip": -14.3181}, 0.7909),
    ("bpg_444_x265_ycbcr", "compressai-bmshj2018-factorized_mse_cuda", "psnr-rgb",
     {"cubic": 32.3743, "akima": 32.4648, "pchip": 32.5487}, -1.3400),
    ("vtm", "compressai-bmshj2018-hyperprior_mse_cuda", "psnr-rgb",
     {"cubic": 30.1391, "akima": 30.4663, "pchip": 30.4864}, -1.2692),
    ("jpeg", "compressai-bmshj2018-factorized_mse_cuda", "psnr-rgb",  # 19 points against 8
     {"cubic": -44.9506, "akima": -44.5512, "pchip": -44.5194}, 3.2290),
    ("paper-bmshj2018-factorized", "compressai-bmshj2018-factorized_mse_cuda", "psnr-rgb",
     {"cubic": 0.8148, "akima": 0.9154, "pchip": 0.9605}, -0.0426),
]


@pytest.mark.parametrize("anchor_name, test_name, key, expected, bd_quality", REFERENCE)
def test_bd_matches_reference_table_and_vceg_m33(anchor_name, test_name, key, expected, bd_quality):
    anchor, test = kodak(anchor_name), kodak(test_name)
    args = (anchor.bpp, anchor.values(key), test.bpp, test.values(key))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # BPG/VTM/JPEG pairs overlap < 75 % and the package warns
        for method, value in expected.items():
            assert rd.bd_rate(*args, method=method) == pytest.approx(value, abs=5e-5)
        assert rd.bd_psnr(*args, method="cubic") == pytest.approx(bd_quality, abs=5e-5)
        assert rd.bd_rate(*args, method="cubic") == pytest.approx(vceg_m33_bd_rate(*args), abs=1e-9)
        assert rd.bd_psnr(*args, method="cubic") == pytest.approx(vceg_m33_bd_psnr(*args), abs=1e-9)


def test_default_method_is_pchip_and_swap_is_not_a_sign_flip():
    fac, hyp = kodak("compressai-bmshj2018-factorized_mse_cuda"), kodak("compressai-bmshj2018-hyperprior_mse_cuda")
    assert rd.bd_rate(fac.bpp, fac.values("psnr-rgb"), hyp.bpp, hyp.values("psnr-rgb")) == \
        pytest.approx(-21.1303, abs=5e-5)
    assert rd.bd_rate(hyp.bpp, hyp.values("psnr-rgb"), fac.bpp, fac.values("psnr-rgb")) == \
        pytest.approx(26.7913, abs=5e-5)


def test_point_order_does_not_matter():
    jp2k, fac = kodak("jpeg2000"), kodak("compressai-bmshj2018-factorized_mse_cuda")
    assert jp2k.bpp[0] > jp2k.bpp[-1]  # stored descending
    forward = rd.bd_rate(jp2k.bpp, jp2k.values("psnr-rgb"), fac.bpp, fac.values("psnr-rgb"))
    backward = rd.bd_rate(jp2k.bpp[::-1], jp2k.values("psnr-rgb")[::-1], fac.bpp, fac.values("psnr-rgb"))
    assert forward == backward


def test_non_monotone_curve_is_a_clear_error():
    rate = [0.2, 0.4, 0.6, 0.8]
    good = [28.0, 30.0, 32.0, 34.0]
    bad = [28.0, 30.0, 29.5, 34.0]
    with pytest.raises(UserError, match="test curve is not monotone: rate 0.4000 gives quality 30.0000"):
        rd.bd_rate(rate, good, rate, bad)
    with pytest.raises(UserError, match="same rate"):
        rd.bd_psnr([0.2, 0.2, 0.6, 0.8], good, rate, good)
    with pytest.raises(UserError, match="do not overlap"):
        rd.bd_rate(rate, good, rate, [40.0, 41.0, 42.0, 43.0])
    with pytest.raises(UserError, match="needs at least 4"):
        rd.bd_rate(rate[:3], good[:3], rate, good, method="cubic")
    with pytest.raises(UserError, match="unknown BD interpolation method"):
        rd.bd_rate(rate, good, rate, good, method="linear")
    assert rd.bd_rate(rate, good, rate, good) == pytest.approx(0.0, abs=1e-12)


def test_ms_ssim_db_curves_and_conversion():
    hpcm = published_curve("tecnick", "paper-hpcm-base_ms-ssim")
    assert "ms-ssim-rgb" not in hpcm.metrics and hpcm.values("ms-ssim-db-rgb")[0] == 14.9
    fac = kodak("compressai-bmshj2018-factorized_ms-ssim_cuda")
    linear = fac.values("ms-ssim-rgb")
    assert fac.values("ms-ssim-db-rgb") == pytest.approx([-10 * math.log10(1 - v) for v in linear])
    with pytest.raises(UserError, match="no 'psnr-rgb'"):
        hpcm.values("psnr-rgb")


def test_table_csv_and_plot(tmp_path):
    anchor = kodak("compressai-bmshj2018-factorized_mse_cuda")
    tests = [kodak("compressai-bmshj2018-hyperprior_mse_cuda"), kodak("paper-bmshj2018-factorized")]
    rows = rd.bd_table(anchor, tests, metric="psnr", methods=rd.METHODS)
    assert rows[0]["bd_rate_pchip_%"] == pytest.approx(-21.1303, abs=5e-5)
    markdown = rd.format_markdown(rows).splitlines()
    assert len(markdown) == 4 and "-21.1303" in markdown[2]
    rd.write_csv(rows, tmp_path / "t.csv")
    assert (tmp_path / "t.csv").read_text().count("\n") == 3
    png = rd.plot_curves([anchor, *tests, kodak("vtm")], tmp_path / "rd.png", title="Kodak")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    hpcm = published_curve("kodak", "paper-hpcm-base_ms-ssim")
    png = rd.plot_curves([kodak("compressai-bmshj2018-factorized_ms-ssim_cuda"), hpcm], tmp_path / "ms.png",
                         metric="ms-ssim")
    assert png.stat().st_size > 10_000
    with pytest.raises(UserError, match="no 'ms-ssim-db-rgb'"):
        rd.plot_curves([kodak("paper-bmshj2018-factorized")], tmp_path / "x.png", metric="ms-ssim")


def test_load_errors(tmp_path):
    with pytest.raises(UserError, match="not found"):
        rd.load_curve(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(UserError, match="not valid JSON"):
        rd.load_curve(tmp_path / "bad.json")
    (tmp_path / "short.json").write_text(json.dumps({"name": "x", "results": {"bpp": [1, 2], "psnr-rgb": [3]}}))
    with pytest.raises(UserError, match="has 1 values but 'bpp' has 2"):
        rd.load_curve(tmp_path / "short.json")


def test_baselines_loader():
    assert published_datasets() == ["clic2020-mobile", "clic2020-professional", "clic2020-professional-valid",
                                    "kodak", "tecnick"]
    assert "vtm" in published_names("clic2020-professional")
    curve = published_curve("clic2020-mobile", "compressai-bmshj2018-factorized_mse_cuda.json")
    assert curve.bpp[0] == pytest.approx(0.1146, abs=5e-5) and curve.values("psnr-rgb")[0] == \
        pytest.approx(28.7631, abs=5e-5)
    with pytest.raises(UserError, match="no published curves for dataset"):
        published_names("div2k")
    with pytest.raises(UserError, match="no published curve 'nope'"):
        published_curve("kodak", "nope")


def test_cli(tmp_path):
    folder = REPO / "baselines" / "published" / "kodak"
    cmd = [sys.executable, "-m", "common.rd", "--anchor", str(folder / "compressai-bmshj2018-factorized_mse_cuda.json"),
           "--test", str(folder / "compressai-bmshj2018-hyperprior_mse_cuda.json"), "--method", "all",
           "--plot", str(tmp_path / "p.png"), "--csv", str(tmp_path / "t.csv")]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "-21.1303" in proc.stdout and "-21.1492" in proc.stdout and "+1.1510" in proc.stdout
    assert (tmp_path / "p.png").is_file() and (tmp_path / "t.csv").is_file()

    (tmp_path / "flat.json").write_text(json.dumps(
        {"name": "demo", "results": {"bpp": [0.67, 0.95], "psnr-rgb": [21.7, 21.7]}}))
    proc = subprocess.run(cmd[:5] + ["--test", str(tmp_path / "flat.json")], cwd=REPO, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()] and "not monotone" in proc.stderr


def test_cli_refuses_a_plot_format_matplotlib_cannot_write(tmp_path):
    folder = REPO / "baselines" / "published" / "kodak"
    proc = subprocess.run([sys.executable, "-m", "common.rd", "--anchor", str(folder / "vtm.json"), "--test",
                           str(folder / "compressai-bmshj2018-factorized_mse_cuda.json"), "--plot",
                           str(tmp_path / "x.xyz")], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stdout == "" and proc.stderr.count("\n") == 1, proc.stderr
    assert proc.stderr.startswith("error: --plot ") and ".pdf, " in proc.stderr and ".png, " in proc.stderr
    assert not (tmp_path / "x.xyz").exists()


def _curve_file(path, name, bpp, psnr, test_set=None):
    document = {"name": name, "results": {"bpp": bpp, "psnr-rgb": psnr}}
    if test_set is not None:
        document["test_set"] = test_set
    path.write_text(json.dumps(document))
    return str(path)


def test_rate_overlap_is_measured_on_log_rate():
    # [0.1, 0.4] and [0.2, 0.8]: log10 ranges overlap over log10(2) of a union of log10(8).
    assert rd.rate_overlap([0.1, 0.4], [0.2, 0.8]) == pytest.approx(math.log10(2) / math.log10(8))
    assert rd.quality_overlap([30, 34], [32, 36]) == pytest.approx(2 / 6)


def test_cli_refuses_curves_of_different_test_sets():
    published = REPO / "baselines" / "published"
    cmd = [sys.executable, "-m", "common.rd", "--anchor", str(published / "clic2020-professional" / "vtm.json"),
           "--test", str(published / "clic2020-professional-valid" / "paper-hpcm-base_mse.json")]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and "different test sets" in proc.stderr and "(valid), 41 images" in proc.stderr


def test_unknown_fields_do_not_block_a_comparison(tmp_path):
    kodak_vtm = kodak("vtm")
    ours = rd.load_curve(_curve_file(tmp_path / "o.json", "ours", [0.2, 0.5, 1.0], [28.0, 31.0, 34.0],
                                     {"name": "kodak", "split": None, "num_images": 24}))
    assert rd.test_set_mismatch(kodak_vtm, ours) is None
    other = rd.load_curve(_curve_file(tmp_path / "p.json", "other", [0.2, 0.5, 1.0], [28.0, 31.0, 34.0],
                                      {"name": "kodak", "num_images": 23}))
    assert "different test sets" in rd.test_set_mismatch(kodak_vtm, other)
    assert rd.test_set_mismatch(kodak_vtm, rd.load_curve(_curve_file(tmp_path / "q.json", "q", [1, 2], [3, 4]))) is None


def test_cli_shows_what_it_can(tmp_path):
    anchor = _curve_file(tmp_path / "a.json", "anchor", [0.2, 0.4, 0.8], [28.0, 30.0, 32.0])
    good = _curve_file(tmp_path / "g.json", "good", [0.18, 0.36, 0.72], [28.0, 30.0, 32.0])
    flat = _curve_file(tmp_path / "f.json", "flat", [0.3, 0.6], [29.0, 29.0])
    cmd = [sys.executable, "-m", "common.rd", "--anchor", anchor, "--test", good, flat,
           "--plot", str(tmp_path / "rd.png"), "--csv", str(tmp_path / "t.csv")]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    good_row, flat_row = [line for line in proc.stdout.splitlines() if line.startswith(("| anchor | good", "| anchor | flat"))]
    assert "-10.0000" in good_row  # the same qualities at 0.9x the rate, exactly
    assert "flat is not monotone" in flat_row and "| – |" in flat_row
    assert (tmp_path / "rd.png").stat().st_size > 10_000
    rows = list(csv.DictReader(open(tmp_path / "t.csv")))
    assert rows[0]["note"] == "" and rows[1]["bd_rate_pchip_%"] == "nan"
    strict = subprocess.run(cmd + ["--strict"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert strict.returncode == 2 and "1 of 2 pairs could not be computed" in strict.stderr


def test_trimmed_keeps_the_points_that_span_a_quality_range():
    ladder = rd.RDCurve("JPEG", [0.2, 0.3, 0.4, 0.5, 0.6, 0.7], {"psnr-rgb": [24.0, 26.0, 27.0, 28.0, 29.0, 30.0]})
    kept = rd.trimmed(ladder, 26.5, 28.5)
    # one point below 26.5, those inside, one above 28.5
    assert kept.bpp == [0.3, 0.4, 0.5, 0.6] and kept.values("psnr-rgb") == [26.0, 27.0, 28.0, 29.0]
    assert rd.trimmed(ladder, 10.0, 11.0).bpp == [0.2, 0.3]  # at least two points, the nearest ones
    assert rd.trimmed(ladder, 40.0, 41.0).bpp == [0.6, 0.7]
