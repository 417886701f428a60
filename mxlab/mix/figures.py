"""Figures of a frontier (``Frontier.to_dict()`` in, plotly out; no model, no pipeline)."""
from __future__ import annotations

import plotly.graph_objects as go

_KIND_STYLE = {"solver": ("circle", "#d62728"), "uniform": ("square", "#1f77b4"), "random": ("x", "#7f7f7f")}


def frontier_chart(frontier: dict, budget: float | None = None) -> go.Figure:
    """Bits per weight vs KL to FP: the predicted frontier, uniform formats, measured runs, the budget."""
    pts = frontier["points"]
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=[p["bits_per_weight"] for p in pts], y=[p["predicted_kl"] for p in pts],
                             mode="lines+markers", name="frontier (predicted)", line_shape="hv",
                             marker=dict(size=4), text=[", ".join(f"{k}: {v}" for k, v in p["counts"].items()) for p in pts],
                             hovertemplate="%{x:.3f} bits/weight<br>predicted KL %{y:.4g}<br>%{text}<extra></extra>"))
    uni = frontier.get("uniform", [])
    fig.add_trace(go.Scatter(x=[u["bits_per_weight"] for u in uni], y=[u["predicted_kl"] for u in uni],
                             mode="markers+text", text=[u["fmt"] for u in uni], textposition="top center",
                             name="uniform (predicted)", marker=dict(symbol="diamond-open", size=10)))
    for kind, (symbol, color) in _KIND_STYLE.items():
        rows = [m for m in frontier.get("measured", []) if m.get("kind") == kind and m.get("kl") is not None]
        if rows:
            fig.add_trace(go.Scatter(x=[m["bits_per_weight"] for m in rows], y=[m["kl"] for m in rows],
                                     mode="markers", name=f"{kind} (measured)", text=[m["label"] for m in rows],
                                     marker=dict(symbol=symbol, size=10, color=color),
                                     hovertemplate="%{text}<br>%{x:.3f} bits/weight<br>measured KL %{y:.4g}<extra></extra>"))
    chosen = frontier.get("chosen")
    if chosen is not None:      # the point the budget picks (to_dict(budget) adds it)
        fig.add_trace(go.Scatter(x=[chosen["bits_per_weight"]], y=[chosen["predicted_kl"]], mode="markers",
                                 name="chosen point", marker=dict(symbol="star", size=16, color="#ff7f0e",
                                                                  line=dict(width=1, color="black")),
                                 hovertemplate="chosen: %{x:.4f} bits/weight<br>predicted KL %{y:.4g}<extra></extra>"))
    if budget is not None:
        fig.add_vline(x=budget, line_dash="dash", annotation_text=f"budget {budget:g}")
    fig.update_layout(title="Mixed formats: bits per weight vs KL to FP", xaxis_title="bits per weight (scales included)",
                      yaxis_title="KL(FP || quantized), nats/token", yaxis_type="log", template="plotly_white")
    return fig


def assignment_grid(grid: list[dict], formats: list[str]) -> go.Figure:
    """Layers x module types coloured by the chosen format (``Frontier.grid`` rows)."""
    blocks = sorted({r["block"] for r in grid})
    locals_ = list(dict.fromkeys(r["local"] for r in grid))
    index = {f: i for i, f in enumerate(formats)}
    z = [[None] * len(locals_) for _ in blocks]
    text = [[""] * len(locals_) for _ in blocks]
    for r in grid:
        i, j = blocks.index(r["block"]), locals_.index(r["local"])
        z[i][j], text[i][j] = index[r["fmt"]], r["fmt"]
    n = max(1, len(formats) - 1)
    palette = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f"]
    scale = []
    for k in range(len(formats)):      # a stepped colour scale: one flat colour per format
        lo, hi = k / len(formats), (k + 1) / len(formats)
        scale += [[lo, palette[k % len(palette)]], [hi, palette[k % len(palette)]]]
    fig = go.Figure(go.Heatmap(z=z, x=locals_, y=[f"block {b}" for b in blocks], text=text, texttemplate="%{text}",
                               zmin=-0.5, zmax=n + 0.5, colorscale=scale, showscale=False,
                               hovertemplate="%{y} %{x}: %{text}<extra></extra>"))
    fig.update_layout(title="Format per module", yaxis_autorange="reversed", template="plotly_white")
    return fig
