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
