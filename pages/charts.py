"""Figures the pages show (plotly lives here, never in backend/): one function per chart, data in, figure out."""
from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots


def sweep_figure(sweep: pd.DataFrame) -> go.Figure:
    """A strength sweep (backend.steering.strength_sweep) in two panels over strength. Top: the share of
    generations where the feature fires (max-pooled over the output, as documents are judged). Bottom: mean
    activation on the output (left axis) and perplexity (right axis, log). Unsteered levels dashed: where
    the effect starts, and where the text breaks."""
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, row_heights=[0.4, 0.6], vertical_spacing=0.08,
                        specs=[[{}], [{"secondary_y": True}]])
    x = sweep["strength"]
    fig.add_trace(go.Scatter(x=x, y=sweep["share_fires"], mode="lines+markers",
                             name="share of generations where it fires"), row=1, col=1)
    fig.add_trace(go.Scatter(x=x, y=sweep["mean_feature_act"], mode="lines+markers",
                             name="feature activation (mean on output)"), row=2, col=1, secondary_y=False)
    fig.add_trace(go.Scatter(x=x, y=sweep["perplexity"], mode="lines+markers", name="perplexity (unsteered model)"),
                  row=2, col=1, secondary_y=True)
    if "unsteered_mean_feature_act" in sweep and len(sweep):
        fig.add_trace(go.Scatter(x=x, y=sweep["unsteered_mean_feature_act"], mode="lines", line=dict(dash="dash"),
                                 name="activation, unsteered", opacity=0.6), row=2, col=1, secondary_y=False)
        fig.add_trace(go.Scatter(x=x, y=sweep["unsteered_perplexity"], mode="lines", line=dict(dash="dot"),
                                 name="perplexity, unsteered", opacity=0.6), row=2, col=1, secondary_y=True)
    title = "Strength sweep"
    if "feature_id" in sweep.attrs:
        title += (f" — feature {sweep.attrs['feature_id']} (1.0 = {sweep.attrs.get('unit', float('nan')):.3g}, "
                  f"{sweep.attrs.get('unit_source', '')})")
    fig.update_layout(title=title, hovermode="x unified", legend=dict(orientation="h", y=-0.2))
    fig.update_xaxes(title_text="strength (× typical activation)", row=2, col=1)
    fig.update_yaxes(title_text="share firing", range=[-0.05, 1.05], row=1, col=1)
    fig.update_yaxes(title_text="mean feature activation on output", row=2, col=1, secondary_y=False)
    fig.update_yaxes(title_text="perplexity", type="log", row=2, col=1, secondary_y=True)
    return fig


def length_histogram(lengths_a, lengths_b) -> go.Figure:
    """Token lengths of the diff's two sides, overlaid, as shares of each side's documents."""
    import plotly.express as px

    frame = pd.concat([pd.DataFrame({"tokens": lengths_a, "side": "A"}), pd.DataFrame({"tokens": lengths_b, "side": "B"})],
                      ignore_index=True)
    fig = px.histogram(frame, x="tokens", color="side", barmode="overlay", histnorm="percent", opacity=0.6,
                       marginal="box", nbins=40, color_discrete_map={"A": "#1f77b4", "B": "#ff7f0e"})
    fig.update_layout(height=320, margin=dict(l=10, r=10, t=10, b=10), yaxis_title="% of documents")
    return fig


def volcano(ranked: pd.DataFrame, names: list[str], alpha: float) -> go.Figure:
    """Share difference (A − B) against −log10 q, length-confounded features in red. Names are plain text
    (angle brackets replaced: plotly hover labels render a subset of HTML)."""
    import numpy as np
    import plotly.express as px

    vol = ranked.copy()
    vol["-log10 q"] = -np.log10(np.clip(vol["q_value"].to_numpy(float), 1e-300, 1.0))
    color = "length_confounded" if "length_confounded" in vol else None
    if color:
        vol["length_confounded"] = vol["length_confounded"].map({True: "length-confounded", False: "not confounded"})
    vol["name"] = [n.replace("<", "‹").replace(">", "›") for n in names]
    fig = px.scatter(vol, x="abs_diff", y="-log10 q", color=color, hover_name="name",
                     hover_data={"share_a": ":.3f", "share_b": ":.3f", "abs_diff": ":+.3f"},
                     color_discrete_map={"length-confounded": "#d62728", "not confounded": "#1f77b4"})
    fig.add_hline(y=-np.log10(alpha), line_dash="dot", line_color="grey")
    fig.add_vline(x=0, line_color="lightgrey")
    fig.update_layout(height=420, margin=dict(l=10, r=10, t=30, b=10),
                      title="Volcano: share difference (A − B) vs significance", xaxis_title="abs diff (share A − share B)")
    return fig


def _plain(text: str) -> str:
    """Plotly hover and legend text render a subset of HTML: angle brackets become look-alikes."""
    return str(text).replace("<", "‹").replace(">", "›")


def trend_figure(table: pd.DataFrame, series: list[str] | None = None, title: str = "Share of documents per bin") -> go.Figure:
    """Shares over bins (backend.analysis.trend table), one line per series with its Wilson interval as a
    band; bins in their order on a categorical axis."""
    fig = go.Figure()
    names = series if series is not None else list(dict.fromkeys(table["series"]))
    palette = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf"]
    for i, name in enumerate(names):
        rows = table[table["series"] == name].sort_values("bin_index")
        if rows.empty:
            continue
        color = palette[i % len(palette)]
        x = rows["bin"].astype(str).tolist()
        legend = _plain(f"{name}: {rows['label'].iloc[0]}")[:80]
        fig.add_trace(go.Scatter(x=x + x[::-1], y=list(rows["ci_high"]) + list(rows["ci_low"])[::-1], fill="toself",
                                 fillcolor=color, opacity=0.15, line=dict(width=0), hoverinfo="skip",
                                 showlegend=False, legendgroup=name))
        fig.add_trace(go.Scatter(x=x, y=rows["share"], mode="lines+markers", name=legend, legendgroup=name,
                                 line=dict(color=color), customdata=rows[["n_fires", "n_docs"]].to_numpy(),
                                 hovertemplate="%{x}: %{y:.1%} (%{customdata[0]:,} of %{customdata[1]:,} documents)"))
    fig.update_layout(title=title, height=420, margin=dict(l=10, r=10, t=40, b=10), hovermode="x unified",
                      legend=dict(orientation="h", y=-0.25), yaxis_tickformat=".0%")
    fig.update_xaxes(type="category", title_text="bin")
    fig.update_yaxes(title_text="share of documents (95% interval)", rangemode="tozero")
    return fig


def explain_scores(score: float | None, baseline: float | None, metric: str) -> go.Figure:
    """Held-out score of the model on SAE concepts beside the same model on MiniLM vectors; chance dotted."""
    names = {"auc": "AUC", "spearman": "Spearman", "r2": "R²"}
    bars = [("SAE concepts", score), ("MiniLM vectors", baseline)]
    bars = [(n, v) for n, v in bars if v is not None]
    fig = go.Figure(go.Bar(x=[v for _, v in bars], y=[n for n, _ in bars], orientation="h",
                           marker_color=["#1f77b4", "#7f7f7f"][: len(bars)], text=[f"{v:.3f}" for _, v in bars],
                           textposition="auto"))
    chance = 0.5 if metric == "auc" else 0.0
    fig.add_vline(x=chance, line_dash="dot", line_color="grey", annotation_text="chance")
    fig.update_layout(height=180, margin=dict(l=10, r=10, t=30, b=10),
                      title=f"Held-out {names.get(metric, metric)}: sparse linear model")
    fig.update_xaxes(range=[min(0.0, *(v for _, v in bars)) if bars else 0.0, 1.0])
    return fig


def explain_findings(frame: pd.DataFrame, numeric: bool) -> go.Figure:
    """Each finding's held-out effect (mean where it fires minus elsewhere; for a category, the share of
    that value), coloured by direction, non-significant ones faded."""
    rows = frame.iloc[::-1]
    text = [_plain(f"#{i} {label}")[:70] for i, label in zip(rows["finding"], rows["label"])]
    fig = go.Figure()
    for direction, group in rows.groupby("direction", sort=False):
        idx = [text[k] for k in range(len(rows)) if rows["direction"].iloc[k] == direction]
        fig.add_trace(go.Bar(x=group["effect"], y=idx, orientation="h", name=_plain(direction),
                             marker_opacity=[1.0 if q < 0.05 else 0.35 for q in group["q_value"]],
                             customdata=group[["share", "q_value"]].to_numpy(),
                             hovertemplate="%{y}: %{x:+.3g} (fires in %{customdata[0]:.0%}; q %{customdata[1]:.2g})"))
    fig.add_vline(x=0, line_color="lightgrey")
    what = "mean where it fires − elsewhere" if numeric else "share of the value where it fires − elsewhere"
    fig.update_layout(height=max(240, 26 * len(rows) + 80), margin=dict(l=10, r=10, t=30, b=10), barmode="overlay",
                      title=f"Held-out effect ({what}); faded: q ≥ 0.05", legend=dict(orientation="h", y=-0.15))
    return fig
