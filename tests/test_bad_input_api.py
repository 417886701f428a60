"""Bad input through the Python API: every bound refused at construction with its limit and reason, short
messages whatever the value, cancellation inside long loops, and nothing written when a run is refused."""
from __future__ import annotations

import time

import pytest
import torch

from _faults import MAX_MESSAGE, snapshot
from conftest import make_tiny_model
from mxlab.errors import Cancelled, MxlabError
from mxlab.evaluate import evaluate_model
from mxlab.limits import LIMITS
from mxlab.ptq.pipeline import quantize_model
from mxlab.recipe import Recipe
from mxlab.steps import AWQConfig, GPTQConfig

HUGE = "x" * 1_000_000


def refused(fn, *match: str) -> str:
    """Call ``fn``; it must raise MxlabError with a one-line, short message containing every ``match``."""
    with pytest.raises(MxlabError) as info:
        fn()
    msg = str(info.value)
    assert "\n" not in msg and len(msg) <= MAX_MESSAGE, msg[:500]
    for m in match:
        assert m in msg, msg
    return msg


# ------------------------------------------------------------------------------- bounds at construction
@pytest.mark.parametrize("recipe, limit", [
    (dict(steps=[{"name": "awq", "n_grid": 1_000_000_000}]), "awq n_grid"),
    (dict(steps=[{"name": "awq", "clip_grid": 10**9}]), "awq clip_grid"),
    (dict(steps=[{"name": "gptq", "blocksize": 10**9}]), "gptq blocksize"),
    (dict(block_size=10**12), "block_size"),
    (dict(calib={"n_samples": 10**9}), "calib n_samples"),
    (dict(calib={"seq_len": 10**9}), "calib seq_len"),
    (dict(calib={"n_samples": 4096, "seq_len": 4096}), "calib tokens"),
    (dict(seed=2**70), "seed"),
])
def test_every_bound_is_refused_with_its_limit_and_reason(recipe, limit):
    lim = LIMITS[limit]
    refused(lambda: Recipe.from_dict(recipe), str(lim.max), lim.reason[:30])


@pytest.mark.parametrize("recipe, match", [
    (dict(block_size=1e12), "positive integer"),
    (dict(seed=-1), "seed"),
    (dict(seed="x"), "seed"),
    (dict(steps=[{"name": "gptq", "percdamp": float("nan")}]), "percdamp"),
    (dict(steps=[{"name": "smoothquant", "alpha": float("inf")}]), "alpha"),
])
def test_wrong_types_and_non_finite_values_are_refused(recipe, match):
    refused(lambda: Recipe.from_dict(recipe), match)


@pytest.mark.parametrize("recipe", [
    dict(weights=HUGE), dict(acts=HUGE), dict(rounding=HUGE), dict(targets=HUGE), dict(steps=[HUGE]),
    dict(steps=[{"name": "awq", HUGE: 1}]), dict(calib={"dataset": HUGE}), dict(calib=HUGE),
    dict(overrides=[{"pattern": HUGE, "weights": HUGE}]), {HUGE: 1}, dict(block_size=[0] * 100000),
])
def test_messages_quote_only_a_short_prefix_of_a_huge_value(recipe):
    msg = refused(lambda: Recipe.from_dict(recipe))
    assert "x" * 50 not in msg


# ------------------------------------------------------------------------------- YAML
def test_alias_bomb_is_refused_at_once_without_expanding():
    bomb = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{c}: &{c} [{', '.join([f'*{p}'] * 9)}]\n" for p, c in zip("abcdefgh", "bcdefghi"))
    assert len(bomb) < 500
    start = time.perf_counter()
    refused(lambda: Recipe.from_yaml(bomb), "anchors/aliases")
    assert time.perf_counter() - start < 1.0


def test_large_yaml_is_refused_by_size_before_parsing():
    text = "weights: mxint4\n" + "# padding\n" * 2_000_000        # 20 MB
    start = time.perf_counter()
    refused(lambda: Recipe.from_yaml(text), "bytes", str(LIMITS["recipe bytes"].max))
    assert time.perf_counter() - start < 1.0


def test_deep_yaml_is_refused():
    refused(lambda: Recipe.from_yaml("steps: " + "[" * 50 + "]" * 50), "nests deeper")


def test_malformed_yaml_gives_one_line():
    refused(lambda: Recipe.from_yaml("weights: [mxint4\nacts: : :\n"), "not valid YAML")


def test_non_utf8_recipe_file(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_bytes(b"weights: mx\xffint4\n")
    refused(lambda: Recipe.load(path), "not UTF-8")


def test_deep_json_is_refused():
    refused(lambda: Recipe.from_json("[" * 100000 + "]" * 100000), "at most")


# ------------------------------------------------------------------------------- evaluation / pipeline
@pytest.fixture(scope="module")
def tiny():
    return make_tiny_model("llama")


def test_max_windows_zero_names_the_argument(tiny):
    tokens = torch.randint(0, 512, (1024,))
    refused(lambda: evaluate_model(tiny, None, tokens, seq_len=64, max_windows=0), "max_windows")


def test_quantize_model_accepts_a_dict_recipe():
    model = make_tiny_model("llama")
    calib = torch.randint(0, 512, (2, 32), generator=torch.Generator().manual_seed(0))
    result = quantize_model(model, None, {"weights": "mxint4", "acts": "none"}, calib_tokens=calib)
    assert result.recipe.weights == "mxint4" and len(result.records) == 2   # one RTN record per block


def test_out_of_vocabulary_calibration_ids_are_refused():
    model = make_tiny_model("llama")
    calib = torch.full((2, 32), 100_000)
    refused(lambda: quantize_model(model, None, Recipe(), calib_tokens=calib), "vocabulary has 512")


def test_inf_in_the_embedding_stops_the_run_before_anything_is_written(tmp_path, monkeypatch):
    import mxlab.runner as runner

    model, tok = runner.load_model(None)
    with torch.no_grad():
        model.model.embed_tokens.weight[3, 5] = float("inf")
    monkeypatch.setattr(runner, "load_model", lambda *a, **k: (model, tok))
    out = tmp_path / "run"
    refused(lambda: runner.run_experiment(None, Recipe(calib={"n_samples": 2, "seq_len": 32}), out_dir=out,
                                          max_eval_windows=1), "model.embed_tokens.weight", "NaN/Inf")
    assert snapshot(tmp_path) == {}


# ------------------------------------------------------------------------------- cancellation in loops
class _Canceller:
    """A progress callback: the user presses Cancel ``seconds`` after the first report; counts the calls."""

    def __init__(self, seconds: float):
        self.seconds, self.pressed_at, self.first, self.calls = seconds, None, None, 0

    def __call__(self, fraction, message):
        self.calls += 1
        now = time.perf_counter()
        self.first = self.first or now
        if now - self.first >= self.seconds:
            self.pressed_at = self.pressed_at or self.first + self.seconds
            raise Cancelled("cancelled by the test")

    def latency(self) -> float:
        """Seconds from the (virtual) press to now, when the Cancelled exception has arrived."""
        return time.perf_counter() - (self.first + self.seconds)


def _cancelling_after(seconds: float) -> _Canceller:
    return _Canceller(seconds)


def test_cancel_inside_awq_grid_search_within_two_seconds():
    model = make_tiny_model("llama")
    calib = torch.randint(0, 512, (4, 64), generator=torch.Generator().manual_seed(0))
    recipe = Recipe(steps=[AWQConfig(n_grid=1000, clip_grid=1000)])   # minutes of grid search
    progress = _cancelling_after(0.5)
    with pytest.raises(Cancelled):
        quantize_model(model, None, recipe, calib_tokens=calib, progress=progress)
    assert progress.latency() < 2.0


def test_cancel_inside_gptq_columns_within_two_seconds():
    from mxlab.ptq.methods.gptq import gptq_quantize
    from mxlab.progress import pulse

    W = torch.randn(256, 2048)
    H = torch.eye(2048)
    progress = _cancelling_after(0.1)         # the whole loop takes ~0.5 s on an idle core: press early
    with pytest.raises(Cancelled):
        # one column at a time over 2048 columns (1 ms each: ~2 s in all, however fast the machine),
        # a report on every column
        gptq_quantize(W, H, lambda c: (time.sleep(0.001), torch.round(c))[1], block_size=1, blocksize=2048,
                      pulse=pulse(progress, 0.5, "gptq", every=0.0))
    assert progress.latency() < 2.0
    assert progress.calls < 2048            # stopped inside the column loop, not after it


def test_cancel_inside_evaluation_windows(tiny):
    tokens = torch.randint(0, 512, (64 * 4000,))
    progress = _cancelling_after(0.3)
    with pytest.raises(Cancelled):
        evaluate_model(tiny, None, tokens, seq_len=64, batch_size=1, progress=progress)
    assert progress.latency() < 2.0 and progress.calls < 4000


def test_gptq_config_limits_via_the_dataclass():
    refused(lambda: GPTQConfig(blocksize=True), "positive integer")
