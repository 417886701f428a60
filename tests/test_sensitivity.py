"""sensitivity.py on a tiny llama: ranking, an independent KL reference, exact restore, the cache."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from conftest import make_tiny_model
from mxlab import sensitivity
from mxlab.errors import MxlabError

pytest.importorskip("mxlab.formats")
from mxlab.formats import quantize  # noqa: E402
from mxlab.recipe import Override, Recipe  # noqa: E402

TOKENS = torch.randint(0, 512, (4 * 32,), generator=torch.Generator().manual_seed(0))


@pytest.fixture
def model():
    """A tiny llama, an empty cache, and one torch thread (tiny matmuls on a shared 2-core box)."""
    sensitivity.clear_cache()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield make_tiny_model("llama")
    torch.set_num_threads(threads)


def _run(model, recipe, **kw):
    return sensitivity.layer_sensitivity(model, recipe, TOKENS, seq_len=32, max_windows=4, **kw)


def test_rows_ranked_and_kl_matches_an_independent_reference(model):
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rows = _run(model, Recipe(weights="mxint3", acts="none", block_size=32))
    assert len(rows) == 2 * 7  # q k v o gate up down in each of 2 blocks
    assert [r["rank"] for r in rows] == list(range(1, 15))
    assert all(a["kl"] >= b["kl"] for a, b in zip(rows, rows[1:])) and rows[-1]["kl"] > 0
    for k, v in model.state_dict().items():  # every weight restored bit for bit
        assert torch.equal(v, before[k]), k
    # reference: quantize the top module by hand, KL(FP || Q) with torch's kl_div
    top = rows[0]
    windows = TOKENS.reshape(4, 32)
    with torch.no_grad():
        logp_fp = F.log_softmax(model(input_ids=windows).logits, -1)
        lin = model.get_submodule(top["unit"])
        saved = lin.weight.data.clone()
        lin.weight.data = quantize(saved, "mxint3", block_size=32)
        logp_q = F.log_softmax(model(input_ids=windows).logits, -1)
        lin.weight.data = saved
    ref = F.kl_div(logp_q.reshape(-1, 512), logp_fp.reshape(-1, 512), log_target=True, reduction="batchmean")
    assert top["kl"] == pytest.approx(float(ref), rel=1e-4)
    nll = F.cross_entropy(logp_q[:, :-1].reshape(-1, 512), windows[:, 1:].reshape(-1))
    assert top["ppl"] == pytest.approx(float(nll.exp()), rel=1e-5)


def test_planted_weak_module_ranks_first(model):
    """Everything mxint8 except one module in mxint2: that module must top the ranking by far."""
    weak = "model.layers.1.mlp.up_proj"
    recipe = Recipe(weights="mxint8", acts="none", overrides=[Override(pattern=weak, weights="mxint2")])
    rows = _run(model, recipe)
    assert rows[0]["unit"] == weak and rows[0]["weights"] == "mxint2"
    assert rows[0]["kl"] > 100 * rows[1]["kl"]


def test_block_granularity_and_activation_hooks_removed(model):
    rows = _run(model, Recipe(weights="none", acts="mxint4"), granularity="block")
    assert [r["unit"] for r in sorted(rows, key=lambda r: r["block"])] == ["model.layers.0", "model.layers.1"]
    assert all(r["n_modules"] == 7 and r["kl"] > 0 for r in rows)
    assert all(not m._forward_pre_hooks for m in model.modules())


def test_cache_skips_the_model(model):
    recipe = Recipe(weights="mxint4", acts="mxint8")
    first = _run(model, recipe)
    calls = []
    model.register_forward_hook(lambda *a: calls.append(1))
    second = _run(model, recipe)
    assert second == first and calls == []
    _run(model, recipe, granularity="block")  # another key: computed
    assert calls


def test_nothing_to_quantize_is_an_error(model):
    with pytest.raises(MxlabError, match="no Linear"):
        _run(model, Recipe(weights="none", acts="none"))
    with pytest.raises(MxlabError, match="granularity"):
        _run(model, Recipe(), granularity="layer")


def test_cache_misses_when_any_weight_changes():
    """Every tensor is in the key: changing one element of any weight (the issue: an unsampled one) misses."""
    import mxlab.sensitivity as sens
    from conftest import make_tiny_model

    model = make_tiny_model("llama")
    before = sens.weights_digest(model)
    names = [n for n, _ in model.named_parameters()]
    for name in names:
        p = model.get_parameter(name)
        with torch.no_grad():
            old = p.view(-1)[-1].item()
            p.view(-1)[-1] = old + 1.0
        assert sens.weights_digest(model) != before, name
        with torch.no_grad():
            p.view(-1)[-1] = old
    assert sens.weights_digest(model) == before
    assert sens.weights_digest(model.to(torch.bfloat16)) != before


def test_cache_is_bounded_and_keyed_on_weights():
    """At most CACHE_SIZE results are kept; a changed model with the same id is computed again."""
    import mxlab.sensitivity as sens
    from conftest import make_tiny_model

    sens.clear_cache()
    model = make_tiny_model("llama")
    tokens = torch.randint(0, 512, (2, 16))
    first = sens.layer_sensitivity(model, Recipe(), tokens, seq_len=16, max_windows=2, model_id="same")
    with torch.no_grad():
        model.model.layers[-1].mlp.down_proj.weight.mul_(5)
    second = sens.layer_sensitivity(model, Recipe(), tokens, seq_len=16, max_windows=2, model_id="same")
    assert first[0]["ppl_fp"] != second[0]["ppl_fp"]
    for seed in range(sens.CACHE_SIZE + 3):
        sens.layer_sensitivity(model, Recipe(seed=seed + 1), tokens, seq_len=16, max_windows=2)
    assert len(sens._CACHE) == sens.CACHE_SIZE


def test_cost_is_known_before_starting_and_auto_goes_per_block_for_big_models(model, monkeypatch):
    recipe = Recipe(weights="mxint4", acts="mxint8")
    from mxlab.ptq.plan import plan

    n_modules = sum(1 for t in plan(model, recipe) if t.kind == "linear")
    cost = sensitivity.sensitivity_cost(model, recipe, TOKENS, seq_len=32, max_windows=4)
    assert cost["granularity"] == "module" and cost["units"] == n_modules
    assert cost["forwards"] == (n_modules + 1) * cost["windows"] and cost["tokens"] == cost["forwards"] * 32
    monkeypatch.setattr(sensitivity, "AUTO_MODULE_LIMIT", n_modules - 1)   # now "too many modules"
    cost = sensitivity.sensitivity_cost(model, recipe, TOKENS, seq_len=32, max_windows=4)
    assert cost["granularity"] == "block" and cost["units"] == model.config.num_hidden_layers


def test_cancel_restores_the_model(model):
    from mxlab.errors import Cancelled

    sensitivity.clear_cache()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    calls = []

    def stop_at_third(fraction, message):
        calls.append(message)
        if len(calls) == 3:
            raise Cancelled("user pressed stop")

    with pytest.raises(Cancelled):
        _run(model, Recipe(weights="mxint4", acts="mxint8"), progress=stop_at_third)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert not any(m._forward_pre_hooks for m in model.modules())
