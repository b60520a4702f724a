"""Figures that break a run down: bytes by ledger category, client peak memory, per-round client timeline."""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.colors import to_rgb
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, MaxNLocator

from hosfl_sim.plots.load import BYTE_CATEGORIES, RunSet
from hosfl_sim.plots.style import (
    CATEGORY_COLORS,
    CATEGORY_LABELS,
    DROP_COLOR,
    log_bytes_axis,
    setting_colors,
    setting_ticks,
    style_axes,
    titles,
)
from hosfl_sim.plots.table import final_rows
from hosfl_sim.plots.units import human_bytes


def comm_breakdown(runset: RunSet) -> Figure:
    """Final cumulative bytes per ledger category, mean over seeds. Left: one stacked bar per setting
    (linear, so the shares are true). Right: each category on a log scale, so that small channels
    such as HO-SFL's scalars stay visible next to activations and model weights."""
    final = final_rows(runset.rounds)
    cats = [c for c in BYTE_CATEGORIES if f"bytes_{c}" in final and final[f"bytes_{c}"].fillna(0).gt(0).any()]
    settings = [s for s in runset.settings if (final["setting"] == s).any()]
    means = final.groupby("setting")[[f"bytes_{c}" for c in cats]].mean().reindex(settings).fillna(0)
    colors = setting_colors(runset.settings)

    height = 1.9 + 0.5 * max(len(settings), 0.6 * len(cats))
    fig = Figure(figsize=(11.0, height), layout="constrained")
    ax, ax_log = fig.subplots(1, 2, width_ratios=[3, 2])
    left = np.zeros(len(settings))
    for c in cats:
        vals = means[f"bytes_{c}"].to_numpy(dtype=float)
        ax.barh(range(len(settings)), vals, left=left, height=0.6, color=CATEGORY_COLORS[c], label=CATEGORY_LABELS[c])
        left += vals
    for i, total in enumerate(left):
        ax.annotate(human_bytes(total), (total, i), xytext=(4, 0), textcoords="offset points", va="center", fontsize=8)
    ax.set_xlim(0, left.max() * 1.18 if len(left) and left.max() > 0 else 1)
    setting_ticks(ax, settings, colors)
    style_axes(ax)
    ax.grid(False, axis="y")
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: human_bytes(v)))
    ax.set_xlabel("Bytes over the run, all clients (final cumulative, mean over seeds)")
    titles(ax, "Communication by ledger category", "↑ client→server, ↓ server→client")

    # One row per category, one dot per setting, nudged apart vertically.
    offsets = np.linspace(-0.25, 0.25, len(settings)) if len(settings) > 1 else np.zeros(1)
    for j, setting in enumerate(settings):
        vals = means.loc[setting, [f"bytes_{c}" for c in cats]].to_numpy(dtype=float)
        used = vals > 0
        ax_log.scatter(vals[used], np.arange(len(cats))[used] + offsets[j], s=22, color=colors[setting], zorder=3)
    log_bytes_axis(ax_log, max_decades=4)
    ax_log.set_yticks(range(len(cats)), [CATEGORY_LABELS[c] for c in cats])
    ax_log.set_ylim(len(cats) - 0.5, -0.5)
    style_axes(ax_log)
    ax_log.set_xlabel("Bytes over the run (log scale)")
    titles(ax_log, "Per category", "dots coloured by setting")
    handles, labels = ax.get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower left", ncol=min(4, max(len(cats), 1)), fontsize=8, frameon=False)
    return fig


def client_memory(runset: RunSet) -> Figure:
    """Peak client memory per setting: max over a run's rounds, mean over seeds, whiskers min-max."""
    final = final_rows(runset.rounds).dropna(subset=["client_peak_mem_bytes"])
    settings = [s for s in runset.settings if (final["setting"] == s).any()]
    g = final.groupby("setting")["client_peak_mem_bytes"]
    mean, lo, hi = (g.mean().reindex(settings), g.min().reindex(settings), g.max().reindex(settings))
    colors = setting_colors(runset.settings)
    fig = Figure(figsize=(8.0, 1.6 + 0.55 * len(settings)), layout="constrained")
    ax = fig.add_subplot()
    y = np.arange(len(settings))
    err = np.vstack([(mean - lo).to_numpy(), (hi - mean).to_numpy()])
    ax.barh(y, mean.to_numpy(), height=0.6, color=[colors[s] for s in settings], xerr=err, capsize=3)
    for i, v in enumerate(mean.to_numpy()):
        ax.annotate(human_bytes(v), (hi.iloc[i], i), xytext=(6, 0), textcoords="offset points", va="center", fontsize=8)
    ax.set_xlim(0, hi.max() * 1.2)
    setting_ticks(ax, settings, colors)
    style_axes(ax)
    ax.grid(False, axis="y")
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: human_bytes(v)))
    ax.set_xlabel("Peak memory of one client process (max over rounds)")
    titles(ax, "Client peak memory", "bar: mean over seeds; whiskers: min–max")
    return fig


def timeline_run(runset: RunSet) -> str | None:
    c = runset.clients
    if "comm_s" not in c or "compute_s" not in c:
        return None
    ok = c.dropna(subset=["comm_s", "compute_s"])
    for m in runset.manifests:  # first run in settings order that recorded the columns
        if (ok["run"] == m["run"]).any():
            return m["run"]
    return None


def client_timeline(runset: RunSet, run: str | None = None, max_rounds: int = 40) -> Figure:
    """For one run: per round, the slowest completed client's compute + communication time as a bar,
    every client's total as a dot, and clients that did not complete as red crosses."""
    run = run or timeline_run(runset)
    if run is None:
        raise ValueError("no run recorded comm_s and compute_s in clients.parquet")
    c = runset.clients[runset.clients["run"] == str(run)].copy()
    manifest = next(m for m in runset.manifests if m["run"] == str(run))
    all_rounds = sorted(c["round"].unique())
    shown = all_rounds[:max_rounds]
    c = c[c["round"].isin(shown)]
    c["total_s"] = c["compute_s"].fillna(0) + c["comm_s"].fillna(0)
    color = setting_colors(runset.settings)[manifest["setting"]]
    fig = Figure(figsize=(8.0, float(np.clip(1.8 + 0.16 * len(shown), 3.2, 10.0))), layout="constrained")
    ax = fig.add_subplot()
    _timeline_clients(ax, c, shown, color)
    r = runset.rounds
    if "round_duration_s" in r:
        dur = r[(r["run"] == str(run)) & r["round"].isin(shown)].dropna(subset=["round_duration_s"])
        if len(dur):
            ax.scatter(dur["round_duration_s"], dur["round"], marker="|", s=120, color="black", zorder=4)
            ax.scatter([], [], marker="|", color="black", label="round duration (simulated)")
    ax.invert_yaxis()
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylim(shown[-1] + 0.6, shown[0] - 0.6)
    ax.set_ylabel("Round")
    ax.set_xlabel("Seconds per round (compute: measured wall time; communication: simulated)")
    style_axes(ax)
    rng = f"rounds {shown[0]}–{shown[-1]} of {len(all_rounds)}" if len(shown) < len(all_rounds) else ""
    seed = manifest.get("seed")
    titles(ax, f"Client timeline: {manifest['setting']}, seed {seed}", rng)
    _timeline_legend(fig, ax)
    return fig


def _timeline_clients(ax: Axes, c: pd.DataFrame, shown: list, color: tuple) -> None:
    """The slowest completed client's compute and communication as bars, every client's total as a point."""
    done = c["status"].eq("completed") if "status" in c else pd.Series(True, index=c.index)
    light = tuple(0.45 * np.array(to_rgb(color)) + 0.55)
    slowest = c[done].sort_values("total_s").groupby("round").tail(1).set_index("round").reindex(shown)
    rounds = np.asarray(shown, dtype=float)
    comp = slowest["compute_s"].fillna(0).to_numpy(dtype=float)
    comm = slowest["comm_s"].fillna(0).to_numpy(dtype=float)
    ax.barh(rounds, comp, height=0.7, color=color, label="compute, slowest completed client (measured)")
    ax.barh(rounds, comm, left=comp, height=0.7, color=light, label="communication, same client (simulated)")
    ax.scatter(c.loc[done, "total_s"], c.loc[done, "round"], s=8, color="0.25", zorder=3, label="each completed client")
    n_drop = int((~done).sum())
    if n_drop:
        ax.scatter(
            c.loc[~done, "total_s"],
            c.loc[~done, "round"],
            s=30,
            marker="x",
            color=DROP_COLOR,
            zorder=4,
            label=f"client not completed (dropped/unavailable/failed): {n_drop}",
        )


def _timeline_legend(fig: Figure, ax: Axes) -> None:
    """One legend under the figure, the bars' entries first."""
    handles, labels = ax.get_legend_handles_labels()
    order = sorted(range(len(labels)), key=lambda i: not labels[i].startswith(("compute", "communication")))
    fig.legend(
        [handles[i] for i in order],
        [labels[i] for i in order],
        loc="outside lower center",
        ncol=2,
        fontsize=8,
        frameon=False,
    )
