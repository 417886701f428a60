"""stats.py: outlier measures on planted outliers, MX scale statistics against hand-computed cases."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mxlab import tables
from mxlab.ptq import statistics
from mxlab.errors import MxlabError
from mxlab.records import ModuleRecord, StepRecord

OUTLIERS = {42: 50.0, 5: 30.0, 17: 20.0}  # channel -> gain, planted in a 64-channel input


def planted_inputs(n: int = 512, d: int = 64, seed: int = 0) -> torch.Tensor:
    """Gaussian calibration inputs (n, d) whose channels 42, 5, 17 are 50x, 30x, 20x larger."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    for c, gain in OUTLIERS.items():
        x[:, c] *= gain
    return x


@pytest.fixture
def one_thread():
    """Tiny matmuls on a shared 2-core box: one torch thread avoids ~10x slowdowns from spinning threads."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def spec(weights: str, block_size: int) -> dict:
    return dict(weights=weights, acts="none", block_size=block_size, rounding="nearest")


def test_activation_stats_finds_planted_outliers():
    x = planted_inputs()
    s = statistics.activation_stats("m", 0, "fp", x, top_k=3)
    assert s["top_channels"] == [42, 5, 17]  # ordered by gain
    assert s["n_tokens"] == 512 and s["in_features"] == 64
    np.testing.assert_allclose(s["absmax"], x.abs().amax(0).numpy(), rtol=1e-6)
    np.testing.assert_allclose(s["mean_abs"], x.abs().mean(0).numpy(), rtol=1e-5)
    absmax = x.abs().amax(0)
    assert s["outlier_ratio"] == pytest.approx(float(absmax.max() / absmax.median()), rel=1e-6)
    assert s["outlier_ratio"] > 10  # ~50x gain over a median channel's max


def test_kurtosis_matches_scipy():
    from scipy.stats import kurtosis

    x = planted_inputs()
    ref = kurtosis(x.double().numpy().ravel(), fisher=False)
    assert statistics.activation_stats("m", 0, "fp", x)["kurtosis"] == pytest.approx(ref, rel=1e-9)
    gauss = torch.randn(20000, 8, generator=torch.Generator().manual_seed(1))
    assert statistics.activation_stats("m", 0, "fp", gauss)["kurtosis"] == pytest.approx(3.0, abs=0.1)


def test_kurtosis_chunked_equals_one_pass(monkeypatch):
    x = planted_inputs(n=1000)
    whole = statistics.activation_stats("m", 0, "fp", x)
    monkeypatch.setattr(statistics, "_CHUNK", 64)  # 16 chunks, last one short
    chunked = statistics.activation_stats("m", 0, "fp", x)
    assert chunked["kurtosis"] == pytest.approx(whole["kurtosis"], rel=1e-12)
    assert chunked["absmax"] == whole["absmax"]


def test_smoothquant_scaling_reduces_outlier_ratio():
    """s = max|X|^a / max|W|^(1-a) (SmoothQuant, alpha 0.5): X/s has a far smaller outlier ratio, XW^T kept."""
    x = planted_inputs()
    w = torch.randn(32, 64, generator=torch.Generator().manual_seed(2)) * 0.05
    alpha = 0.5
    s = x.abs().amax(0).pow(alpha) / w.abs().amax(0).pow(1 - alpha)  # (in,)
    before = statistics.activation_stats("m", 0, "fp", x)["outlier_ratio"]
    after = statistics.activation_stats("m", 0, "smoothquant", x / s)["outlier_ratio"]
    torch.testing.assert_close((x / s) @ (w * s).T, x @ w.T, rtol=1e-4, atol=1e-4)
    assert before > 40 and after < before / 5  # alpha 0.5 takes ~the square root of the gain


def test_activation_stats_rejects_bad_shape():
    with pytest.raises(MxlabError, match="n_tokens, in_features"):
        statistics.activation_stats("m", 0, "fp", torch.zeros(2, 3, 4))


# ---------------------------------------------------------------------------- MX scale statistics

def test_scale_histogram_counts_every_block_exactly():
    """(6, 70) with blocks of 32: ceil(70/32) = 3 blocks per row, 18 in all; exponents from frexp by hand."""
    g = torch.Generator().manual_seed(3)
    w = torch.randn(6, 70, generator=g) * torch.logspace(-3, 1, 6)[:, None]
    w[2, 32:64] = 0  # an all-zero block: amax 0 -> 2^-126 -> e = -126 (mxint: emax 0)
    out = statistics.mx_scale_stats(w, "mxint4", 32)
    assert out["n_blocks"] == 18 and sum(out["exp_counts"]) == 18
    expected: dict[int, int] = {}
    for r in range(6):
        for j in range(0, 70, 32):
            amax = float(w[r, j:j + 32].abs().max())
            e = math.frexp(amax)[1] - 1 if amax > 0 else -126  # floor(log2 amax), emax = 0
            expected[e] = expected.get(e, 0) + 1
    assert dict(zip(out["exp_values"], out["exp_counts"])) == expected
    assert expected[-126] == 1
    fp4 = statistics.mx_scale_stats(w, "mxfp4_e2m1", 32)  # emax 2: exponents shift down by 2, clamped at -127
    assert dict(zip(fp4["exp_values"], fp4["exp_counts"])) == {max(e - 2, -127): c for e, c in expected.items()}


def test_saturation_flush_and_headroom_hand_case_mxint4():
    """mxint4 (max_norm 7/4, emax 0), blocks of 4.

    block A = [1.9, 1.0, 0.5, -1.8]: amax 1.9 -> e = 0; |1.9|, |-1.8| > 1.75 saturate (2 elements);
      headroom log2(1.75/1.9) < 0 -> 0 bits.
    block B = [1.0, 0.25, 0.0, 0.1]: amax 1 -> e = 0; nothing saturates; 0.1*4 = 0.4 rounds to 0
      (flushed; the 0.0 was zero already); headroom log2(1.75/1) = 0.8074 bits.
    """
    from mxlab.formats import quantize

    w = torch.tensor([[1.9, 1.0, 0.5, -1.8, 1.0, 0.25, 0.0, 0.1]])
    w_q = quantize(w, "mxint4", block_size=4)
    torch.testing.assert_close(w_q, torch.tensor([[1.75, 1.0, 0.5, -1.75, 1.0, 0.25, 0.0, 0.0]]))
    s = statistics.weight_stats("l", 0, w, w_q, spec("mxint4", 4))
    assert s["n_blocks"] == 2 and s["exp_values"] == [0] and s["exp_counts"] == [2]
    assert s["saturated_frac"] == pytest.approx(2 / 8)
    assert s["flushed_frac"] == pytest.approx(1 / 8)
    assert s["headroom_bits"] == pytest.approx(math.log2(1.75) / 2)
    mse = (0.15 ** 2 + 0.05 ** 2 + 0.1 ** 2) / 8
    assert s["mse"] == pytest.approx(mse, rel=1e-5)
    assert s["sqnr_db"] == pytest.approx(10 * math.log10(float(w.pow(2).sum()) / (8 * mse)), rel=1e-5)
    assert s["w_min"] == [pytest.approx(-1.8)] and s["w_max"] == [pytest.approx(1.9)]


def test_saturation_hand_case_mxfp4():
    """mxfp4 (E2M1, max_norm 6, emax 2), block of 4: [7, 1, 0, 0] -> e = floor(log2 7) - 2 = 0, 7 > 6
    saturates; [5, -2, 0.5, 0] -> e = 0, none saturates, headroom log2(6/5)."""
    w = torch.tensor([[7.0, 1.0, 0.0, 0.0, 5.0, -2.0, 0.5, 0.0]])
    out = statistics.mx_scale_stats(w, "mxfp4", 4)
    assert out["exp_values"] == [0] and out["exp_counts"] == [2]
    assert out["saturated_frac"] == pytest.approx(1 / 8)
    assert out["headroom_bits"] == pytest.approx(math.log2(6 / 5) / 2)


def test_activation_stats_count_the_blocks_an_mx_activation_format_quantizes():
    """x (10 tokens, 70): blocks of 32 along in_features, 3 per token, 30 in all; the same histogram as
    mx_scale_stats (one definition of the shared exponent); none without an MX activation format."""
    x = planted_inputs(n=10, d=70)
    act = dict(weights="mxint4", acts="mxint8", block_size=32, rounding="nearest")
    s = statistics.activation_stats("m", 0, "fp", x, spec=act)
    assert (s["format"], s["block_size"], s["n_blocks"]) == ("mxint8", 32, 30) and sum(s["exp_counts"]) == 30
    ref = statistics.mx_scale_stats(x, "mxint8", 32)
    assert (s["exp_values"], s["exp_counts"]) == (ref["exp_values"], ref["exp_counts"])
    # channel 42 (x50) and 5 (x30) sit in blocks 1 and 0: those blocks' exponents are 4-6 above block 2's
    assert max(s["exp_values"]) - min(s["exp_values"]) >= 4
    assert statistics.activation_stats("m", 0, "fp", x, spec=dict(act, acts="int8"))["exp_values"] is None
    assert statistics.activation_stats("m", 0, "fp", x)["format"] is None


def test_weight_stats_non_mx_format_has_no_scale_stats():
    w = torch.randn(4, 16)
    s = statistics.weight_stats("l", 1, w, w.clone(), spec("int4", 32))
    assert s["n_blocks"] is None and s["exp_values"] is None and s["saturated_frac"] is None
    assert s["mse"] == 0 and s["sqnr_db"] == math.inf and s["flushed_frac"] == 0


# ---------------------------------------------------------------------------- tables

def _records() -> list[StepRecord]:
    return [StepRecord("smoothquant", 0, [ModuleRecord("model.layers.0.q", "smoothquant", 4.0, 2.0, 10.0, 13.0, 0.5,
                                                       {"alpha": 0.5})], seconds=0.6),
            StepRecord("gptq", 0, [ModuleRecord("model.layers.0.q", "gptq", 2.0, 1.0, 13.0, 16.0, 0.2,
                                                {"damp": 0.01, "order": [2, 1]})], seconds=0.3)]


def test_records_table_one_row_per_module_and_step():
    df = tables.records_table(_records())
    assert list(df["step"]) == ["smoothquant", "gptq"] and len(df) == 2
    assert list(df["d_mse"]) == [-2.0, -1.0] and list(df["d_sqnr"]) == [3.0, 3.0]
    assert df.loc[0, "detail_alpha"] == 0.5 and df.loc[1, "detail_order"] == "[2, 1]"
    as_dicts = tables.records_table([r.to_dict() for r in _records()])  # records read back from results.json
    assert as_dicts.equals(df)


def test_tables_and_csv(tmp_path):
    import pandas as pd

    x = planted_inputs(n=64)
    w = torch.randn(8, 64)
    st = {"activations": [statistics.activation_stats("a", 0, "fp", x), statistics.activation_stats("a", 0, "sq", x / 2)],
          "weights": [statistics.weight_stats("a", 0, w, w.round(), spec("mxint8", 32))]}
    assert len(tables.activation_table(st)) == 2
    assert tables.activation_table(st).loc[0, "top_channels"].startswith("42,5,17")
    ch = tables.activation_channel_table(st)
    assert len(ch) == 2 * 64 and ch.groupby("stage")["absmax"].idxmax().map(ch["channel"]).tolist() == [42, 42]
    assert len(tables.weight_channel_table(st)) == 8
    assert tables.scale_table(st)["count"].sum() == 8 * 2
    paths = tables.write_tables(tmp_path, records=_records(), stats=st)
    assert set(paths) == {"records", "activations", "activation_channels", "weights", "weight_channels", "scales"}
    back = pd.read_csv(paths["weights"])
    assert back.loc[0, "n_blocks"] == 16 and back.loc[0, "format"] == "mxint8"
    assert not list(tmp_path.glob(".*"))  # no temp files left


def test_pipeline_smoothquant_reduces_planted_outliers(one_thread):
    """Tiny llama whose input_layernorm amplifies channels 42, 5, 17: the pipeline's fp stats find them,
    and methods/smoothquant (alpha 0.5) cuts the q/k/v input outlier ratio by several times."""
    from conftest import make_tiny_model
    from mxlab.ptq.pipeline import quantize_model
    from mxlab.recipe import Recipe

    model = make_tiny_model("llama")
    with torch.no_grad():
        for layer in model.model.layers:
            for c, gain in OUTLIERS.items():
                layer.input_layernorm.weight[c] *= gain
    calib = torch.randint(0, 512, (4, 32), generator=torch.Generator().manual_seed(0))
    res = quantize_model(model, None, Recipe(weights="mxint4", acts="mxint8", steps="smoothquant"), calib_tokens=calib)
    acts = tables.activation_table(res.stats).set_index(["module", "stage"])
    assert len(res.stats["weights"]) == 2 * 7
    for b in range(2):
        q = f"model.layers.{b}.self_attn.q_proj"
        assert acts.loc[(q, "fp"), "top_channels"].split(",")[:3] == ["42", "5", "17"]
        before, after = acts.loc[(q, "fp"), "outlier_ratio"], acts.loc[(q, "smoothquant"), "outlier_ratio"]
        assert before > 20 and after < before / 4, (before, after)
    # every MX weight's exponent histogram counts exactly its blocks
    for w in res.stats["weights"]:
        assert sum(w["exp_counts"]) == w["n_blocks"] == w["out_features"] * -(-w["in_features"] // 32)
