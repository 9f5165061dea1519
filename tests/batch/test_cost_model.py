import math
import re
from pathlib import Path

import moefast as mf
import numpy as np
import pytest
from moefast.batch.cost_model import (
    CALIBRATED,
    EXPERT_SHAPES,
    GPUS,
    fit_calibration,
    load_calibration,
    preset_source,
)

DOCS = Path(__file__).resolve().parents[2] / "docs" / "cost-model.md"


def test_expert_time_forms():
    assert mf.CostModel(130, 0.5).expert_time(100) == pytest.approx(180)
    assert mf.CostModel(130, 0.5, math.inf).expert_time([100, 1000]).tolist() == [130, 500]
    assert mf.CostModel(3, 1, 2).expert_time(4) == pytest.approx(5)
    assert mf.CostModel(3, 1, 2).expert_time(0) == 0


def test_for_expert_arithmetic():
    cm = mf.CostModel.for_expert(
        4096, 14336, dtype_bytes=2, bandwidth=3.35e12, flops=989.4e12, overhead=5
    )
    weight_bytes = 3 * 4096 * 14336 * 2
    assert weight_bytes == 352_321_536  # the calibration file's bytes_per_expert
    assert cm.alpha == pytest.approx(weight_bytes / 3.35e12 * 1e6 + 5)
    assert cm.beta == pytest.approx(6 * 4096 * 14336 / 989.4e12 * 1e6)
    assert cm.p == 1


def test_presets_cover_the_models_and_gpus():
    assert {
        "mixtral-8x7b",
        "dbrx",
        "deepseek-v2-lite",
        "olmoe-1b-7b",
        "qwen3-30b-a3b",
        "deepseek-v3",
        "gpt-oss-20b",
    } <= set(EXPERT_SHAPES)
    # DBRX was not measured: datasheet estimates on both GPUs.
    h100 = mf.CostModel.preset("dbrx", "h100")
    h200 = mf.CostModel.preset("dbrx", "h200")
    # Same FLOP/s, more bandwidth: H200 reads weights faster.
    assert h200.alpha < h100.alpha and h200.beta == pytest.approx(h100.beta)
    assert "datasheet estimate" in preset_source("dbrx", "h200")
    assert set(GPUS) == {"h100", "h200"}
    with pytest.raises(ValueError, match="unknown model"):
        mf.CostModel.preset("llama")
    with pytest.raises(ValueError, match="unknown gpu"):
        mf.CostModel.preset("olmoe", "a100")


def _docs_calibration_rows() -> dict[tuple[int, int], tuple[str, str, str]]:
    """The calibration table of docs/cost-model.md: shape -> (alpha, beta, p) as printed."""
    section = DOCS.read_text().split("### Calibration", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in section.splitlines():
        m = re.match(r"\| [^|]* (\d+)x(\d+) \| ([\d.]+) \| ([\d.]+) \| ([\d.]+) \|", line)
        if m:
            rows[int(m[1]), int(m[2])] = (m[3], m[4], m[5])
    return rows


def test_presets_are_the_calibration_table_of_the_docs():
    rows = _docs_calibration_rows()
    measured = {(e["hidden"], e["intermediate"]) for e in load_calibration()["models"].values()}
    assert set(rows) == measured == set(CALIBRATED["h100"])
    for model, shape in EXPERT_SHAPES.items():
        cm = mf.CostModel.preset(model, "h100")
        if shape in rows:
            assert (f"{cm.alpha:.1f}", f"{cm.beta:.4f}", f"{cm.p:.2f}") == rows[shape], model
            assert "calibration fit" in preset_source(model)
        else:
            assert "datasheet estimate" in preset_source(model)


def test_presets_accept_the_model_names_of_layouts():
    # --model olmoe and --preset olmoe name the same expert.
    assert mf.CostModel.preset("olmoe") == mf.CostModel.preset("olmoe-1b-7b")
    assert mf.CostModel.preset("DeepSeek_R1") == mf.CostModel.preset("deepseek-v3")
    assert mf.CostModel.preset("olmoe").alpha == pytest.approx(18.5, abs=0.05)
    # A fixed p refits the measurements: the additive fit of the docs' table.
    additive = mf.CostModel.preset("deepseek-v3", p=1.0)
    assert additive.p == 1.0 and 40 < additive.alpha < 55


@pytest.mark.slow
def test_calibrated_presets_are_the_fits_of_the_shipped_measurements():
    fits = fit_calibration()
    for name, fit in fits.items():
        cm = mf.CostModel.preset(name)
        assert cm.alpha == pytest.approx(fit.model.alpha, rel=1e-3), name
        assert cm.beta == pytest.approx(fit.model.beta, rel=1e-3), name
        assert cm.p == fit.model.p, name


@pytest.mark.parametrize(
    "args, exc, match",
    [
        ((-1, 0.5), ValueError, "alpha"),
        ((1, -0.5), ValueError, "beta"),
        ((1, float("nan")), ValueError, "beta"),
        ((1, 0.5, 0.5), ValueError, "p must"),
        (("1", 0.5), TypeError, "alpha"),
    ],
)
def test_rejects_bad_parameters(args, exc, match):
    with pytest.raises(exc, match=match):
        mf.CostModel(*args)


def test_fit_recovers_known_parameters():
    true = mf.CostModel(120, 0.4, 2.0)
    n = np.array([1, 16, 128, 512, 2048, 1, 128, 2048])
    t = np.array([1, 1, 1, 1, 1, 4, 4, 4])
    fit = mf.CostModel.fit(n, t * true.expert_time(n), experts=t)
    assert fit.model.alpha == pytest.approx(120, rel=1e-3)
    assert fit.model.beta == pytest.approx(0.4, rel=1e-3)
    assert fit.model.p == pytest.approx(2.0, abs=0.05)
    assert fit.max_rel_err < 1e-3


def test_fit_with_fixed_p_and_errors_per_point():
    n = np.array([1, 64, 256, 1024, 4096])
    y = np.array([140.0, 150, 180, 510, 2180])
    fit = mf.CostModel.fit(n, y, p=1.0)
    assert fit.model.p == 1
    assert fit.rel_errors.shape == (5,)
    assert np.allclose(fit.predicted, fit.model.expert_time(n))
    assert "| experts | tokens |" in fit.points_table()


def test_fit_rejects_bad_points():
    with pytest.raises(ValueError, match="one length"):
        mf.CostModel.fit([1, 2], [1.0])
    with pytest.raises(ValueError, match="positive"):
        mf.CostModel.fit([1, 2], [1.0, -1.0])


@pytest.mark.slow
def test_calibration_fit_beats_additive_model():
    fits = fit_calibration()
    assert set(fits) >= {"mixtral-8x7b", "deepseek-v3"}
    for name, fit in fits.items():
        additive = mf.CostModel.fit(fit.tokens, fit.measured, fit.experts, p=1.0)
        # The fit minimizes the squared relative errors; p = 1 is one of its candidates.
        assert np.sum(fit.rel_errors**2) <= np.sum(additive.rel_errors**2) + 1e-9, name
    # docs/cost-model.md#a-batch: the smooth maximum fits Mixtral within ~7%, the additive
    # form does not.
    assert fits["mixtral-8x7b"].max_rel_err < 0.10
    assert fits["mixtral-8x7b"].model.p > 1.2


def test_extreme_numbers_give_value_errors_or_finite_results():
    with pytest.raises(ValueError, match=r"alpha = 1000\d* is out of range"):
        mf.CostModel(10**400, 1.0)
    with pytest.raises(ValueError, match="tokens must be finite and non-negative"):
        mf.CostModel(1.0, 1.0).expert_time(-3)
    assert mf.CostModel(130.0, 0.5, 400.0).expert_time([1, 1000]) == pytest.approx([130.0, 500.0])
    with pytest.raises(ValueError, match="overhead must be finite and non-negative"):
        mf.CostModel.for_expert(4096, 14336, overhead=-1e9)
    with pytest.raises(ValueError, match="bandwidth must be positive and finite"):
        mf.CostModel.for_expert(4096, 14336, bandwidth=math.inf)


def test_fit_of_extreme_points():
    # Flat times (best beta = 0) made the coordinate search crawl towards 0 for ever.
    flat = mf.CostModel.fit([1, 16], [20.0, 20.0]).model
    assert flat.alpha == pytest.approx(20.0, rel=1e-3) and flat.beta * 16 < 1e-3
    # Raw y^p overflowed (OverflowError) or underflowed (LinAlgError).
    huge = mf.CostModel.fit([1, 16, 128], [2e300, 2.5e300, 6e300]).model
    small = mf.CostModel.fit([1, 16, 128], [2e-300, 2.5e-300, 6e-300]).model
    assert huge.alpha / 1e300 == pytest.approx(small.alpha * 1e300, rel=1e-6) and huge.p == small.p
    for args, match in [
        (([1, math.inf], [20, 21]), "finite"),
        (([1, 2], [20, 21], [1, math.inf]), "finite"),
        (([1, 2], [20, 21], None, math.nan), "p must be at least 1"),
    ]:
        with pytest.raises(ValueError, match=match):
            mf.CostModel.fit(*args)
