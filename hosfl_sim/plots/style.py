"""Shared looks of every figure: one colour per setting, ledger category names and colours, axes style."""

from __future__ import annotations

import numpy as np
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.colors import ListedColormap
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

from hosfl_sim.plots.load import BYTE_CATEGORIES
from hosfl_sim.plots.units import human_bytes

CATEGORY_LABELS = {
    "act_up": "activations ↑",
    "grad_down": "activation grads ↓",
    "labels_up": "labels ↑",
    "scalar_up": "scalars ↑",
    "scalar_down": "scalars ↓",
    "seed_down": "seeds ↓",
    "model_up": "model weights ↑",
    "model_down": "model weights ↓",
}


def _palette(name: str) -> tuple[tuple[float, ...], ...]:
    """The colours of a qualitative colormap (Set2, tab10, tab20: listed colormaps of RGB tuples)."""
    cmap = colormaps[name]
    assert isinstance(cmap, ListedColormap) and isinstance(cmap.colors, (tuple, list))
    return tuple(cmap.colors)


CATEGORY_COLORS = dict(zip(BYTE_CATEGORIES, _palette("Set2")))

DROP_COLOR = "#d62728"


def setting_colors(settings: list[str]) -> dict[str, tuple[float, ...]]:
    """One colour per setting, by position: the same RunSet gives the same colours in every figure."""
    colors = _palette("tab10" if len(settings) <= 10 else "tab20")
    return {s: colors[i % len(colors)] for i, s in enumerate(settings)}


def log_bytes_axis(ax: Axes, max_decades: float) -> None:
    """Log x-axis in human byte units: ticks every 1000x (1 KB, 1 MB, ...) when decade ticks would
    crowd, and labelled 2x and 5x ticks as well when the data span too few decades to show two."""
    ax.set_xscale("log")
    lo, hi = ax.get_xlim()
    decades = np.log10(hi / max(lo, 1e-12))
    fmt = FuncFormatter(lambda v, _: human_bytes(v))
    ax.xaxis.set_major_formatter(fmt)
    ax.xaxis.set_minor_formatter(NullFormatter())
    if decades > max_decades:
        ax.xaxis.set_major_locator(LogLocator(base=1000.0))
        ax.xaxis.set_minor_locator(LogLocator(base=10.0, subs=(1.0,)))
    elif decades < 2:
        ax.xaxis.set_minor_locator(LogLocator(base=10.0, subs=(2.0, 5.0)))
        ax.xaxis.set_minor_formatter(fmt)
        ax.tick_params(axis="x", which="minor", length=3.5, width=0.8)  # level with the major labels


def style_axes(ax: Axes) -> None:
    ax.grid(True, alpha=0.3, linewidth=0.6)
    ax.spines[["top", "right"]].set_visible(False)


def titles(ax: Axes, title: str, note: str = "") -> None:
    ax.set_title(title, loc="left", fontsize=11, fontweight="bold")
    if note:
        ax.set_title(note, loc="right", fontsize=8, color="0.4")


def setting_ticks(ax: Axes, settings: list[str], colors: dict[str, tuple]) -> None:
    ax.set_yticks(range(len(settings)), settings)
    for label, s in zip(ax.get_yticklabels(), settings):
        label.set_color(colors[s])
    ax.invert_yaxis()  # first setting on top
