"""baselines.stats: intervals, power and the paired bootstrap, against textbook values and a synthetic bundle."""
import csv
import json
import math

import pytest

from baselines import stats
from common.errors import UserError


def test_t_interval_matches_the_t_table():
    # n = 5, mean 3, SD sqrt(2.5); t(0.975, 4) = 2.776445 (any t table).
    mean, sd, low, high = stats.t_interval([1, 2, 3, 4, 5])
    assert mean == 3 and sd == pytest.approx(math.sqrt(2.5), rel=1e-12)
    assert high - mean == pytest.approx(2.776445 * math.sqrt(2.5) / math.sqrt(5), rel=1e-6)
    assert mean - low == pytest.approx(high - mean, rel=1e-12)


def test_power_matches_r_power_t_test():
    # R: power.t.test(n = 10, delta = 1, sd = 1, type = "one.sample")$power = 0.8030969
    assert stats.paired_t_power(1.0, 1.0, 10) == pytest.approx(0.8030969, abs=1e-6)
    effect = stats.detectable_effect(1.0, 10)
    assert effect < 1.0 and stats.paired_t_power(effect, 1.0, 10) == pytest.approx(0.8, abs=1e-9)
    assert stats.seeds_needed(1.0, 1.0) == 10  # 9 seeds fall short of 80 %
    assert stats.paired_t_power(1.0, 1.0, 9) < 0.8


@pytest.mark.parametrize("low, high, word", [(-2, -0.1, "better"), (0.1, 2, "worse"), (-1, 1, "inconclusive")])
def test_verdict(low, high, word):
    assert stats.verdict(low, high) == word


def _write_bundle(folder, scales):
    """Reference arm 'a' and arm 'b' whose every image needs `scales[seed]` times a's bits at the same PSNR."""
    lambdas = [0.001, 0.003, 0.01, 0.03]  # 4 points: cubic needs them
    (folder / "curves").mkdir(parents=True)
    images = {"x.png": (0.10, 28.0), "y.png": (0.20, 30.0), "z.png": (0.15, 26.0)}
    for arm in ("a", "b"):
        for seed, scale in enumerate(scales):
            with (folder / "curves" / f"{arm}_seed{seed}.csv").open("w", newline="") as handle:
                writer = csv.DictWriter(handle, fieldnames=["point", "image", "bpp", "psnr-rgb",
                                                                    "ms-ssim-rgb"])
                writer.writeheader()
                for index, lmbda in enumerate(lambdas):
                    for image, (bpp, psnr) in images.items():
                        rate = bpp * 2 ** index * (scale if arm == "b" else 1.0)
                        writer.writerow({"point": f"lambda={lmbda:g}", "image": image, "bpp": rate,
                                         "psnr-rgb": psnr + 2 * index, "ms-ssim-rgb": 0.9 + 0.01 * index})
    (folder / "summary.json").write_text(json.dumps({"arms": {"a": "", "b": ""}, "reference_arm": "a",
                                                     "seeds": list(range(len(scales))), "lambdas": lambdas,
                                                     "title": "synthetic"}))


def test_bundle_statistics_recover_a_known_rate_saving(tmp_path):
    # A constant rate factor s moves every curve by log(s) in log-rate: BD-rate = (s - 1) · 100 % exactly.
    scales = [0.90, 0.92, 0.88, 0.90]
    _write_bundle(tmp_path, scales)
    assert stats.main([str(tmp_path), "--bootstrap", "200"]) == 0
    document = json.loads((tmp_path / "stats.json").read_text())
    (entry,) = document["arms"]
    for method in ("pchip", "cubic", "akima"):
        assert entry[method]["per_seed_%"] == pytest.approx([-10.0, -8.0, -12.0, -10.0], abs=1e-6)
        # PSNR rises 2 dB per doubling of the rate on every curve, so a rate factor s is -2·log2(s) dB at every rate.
        assert entry[method]["bd_psnr_per_seed_dB"] == pytest.approx([-2 * math.log2(s) for s in scales], abs=1e-6)
    pchip = entry["pchip"]
    assert pchip["mean_%"] == pytest.approx(-10.0, abs=1e-9)
    assert pchip["t_high_%"] < 0 and pchip["verdict"] == "better"
    assert -12.0 - 1e-9 <= pchip["bootstrap_low_%"] <= pchip["bootstrap_high_%"] <= -8.0 + 1e-9
    # l = λ·255²·MSE, MSE from each image's PSNR, averaged over images.
    row = next(r for r in document["points"] if r["arm"] == "a" and r["lambda"] == 0.001)
    mse = sum(10 ** (-p / 10) for p in (28.0, 30.0, 26.0)) / 3
    assert row["l_mean"] == pytest.approx(0.001 * 255 ** 2 * mse, rel=1e-12)
    assert row["ms_ssim_mean"] == pytest.approx(0.9, abs=1e-12)
    assert (tmp_path / "rd_mean.png").stat().st_size > 0 and "better" in (tmp_path / "stats.md").read_text()


@pytest.mark.parametrize("content, message", [("{}", "has no arms"), ("[]", "has no arms"), ("{", "not valid JSON")])
def test_a_foreign_bundle_is_one_line(tmp_path, content, message):
    (tmp_path / "summary.json").write_text(content)
    with pytest.raises(UserError, match=message):
        stats.analyse(tmp_path, draws=0)


def test_a_pair_beside_the_reference_is_paired_the_same_way(tmp_path):
    # a against b is the inverse rate factor: BD-rate (1/s - 1) · 100 % per seed; an unknown arm is one line.
    scales = [0.90, 0.92, 0.88]
    _write_bundle(tmp_path, scales)
    document = stats.analyse(tmp_path, draws=0, pairs=[("a", "b")])
    entry = document["arms"][-1]
    assert entry["reference"] == "b"
    assert entry["pchip"]["per_seed_%"] == pytest.approx([(1 / s - 1) * 100 for s in scales], abs=1e-6)
    assert "| a vs b |" in stats.markdown(document)
    with pytest.raises(UserError, match="--pair a:c: c is not an arm"):
        stats.analyse(tmp_path, draws=0, pairs=[("a", "c")])
