"""Our table beside the paper's: mean ± std of the best test accuracy over seeds for every (cell, algorithm),
the published number and the difference, written as Markdown, CSV and a figure."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd

from hosfl_sim.runtime.sweep_index import INDEX

KEYS = ["dataset", "partition", "model", "algorithm"]


def published(table: str) -> pd.DataFrame:
    """The paper's numbers for `table` (percent), with their sources (published.csv in this package)."""
    with resources.files("hosfl_sim.reproduce").joinpath("published.csv").open() as f:
        df = pd.read_csv(f)
    return df[df["table"] == table].drop(columns="table").rename(columns={"best_test_acc": "paper"})


def ours(sweep_dir: str | Path) -> pd.DataFrame:
    """One row per (cell, algorithm): seeds that ended on their own (completed, or diverged: their best accuracy
    before the divergence counts, as in the reference, whose best accuracy is a running maximum), mean and std of
    best_test_acc in percent, how many of them diverged, and runs that did not end (failed, interrupted)."""
    index = pd.read_parquet(Path(sweep_dir) / INDEX)
    cells = index["description"].str.split("/", expand=True)
    index = index.assign(dataset=cells[0], partition=cells[1], model=cells[2])
    if "best_test_acc" not in index:
        index["best_test_acc"] = np.nan
    rows = []
    for key, group in index.groupby(KEYS, sort=False):
        done = group[group["status"].isin(["completed", "diverged"])]
        acc = 100 * done["best_test_acc"].astype(float).dropna()
        rows.append({**dict(zip(KEYS, key)), "seeds": len(done), "ours": acc.mean() if len(acc) else np.nan,
                     "std": acc.std(ddof=1) if len(acc) > 1 else np.nan,
                     "diverged": int((done["status"] == "diverged").sum()),
                     "not_completed": int(len(group) - len(done))})  # fmt: skip
    return pd.DataFrame(rows)


def compare(sweep_dir: str | Path, table: str) -> pd.DataFrame:
    """Every cell we ran and every published cell, side by side (a side that is missing shows as NaN)."""
    df = ours(sweep_dir).merge(published(table), on=KEYS, how="outer")
    df["diff"] = df["ours"] - df["paper"]
    # the paper's order: models and datasets as published.csv lists them, then partitions and algorithms
    order = {col: {v: i for i, v in enumerate(dict.fromkeys(published(table)[col]))} for col in ("model", "dataset")}
    rank = df.apply(lambda r: tuple(order[c].get(r[c], len(order[c])) for c in ("model", "dataset")), axis=1)
    return df.assign(_rank=rank).sort_values(["_rank", "partition", "algorithm"]).drop(columns="_rank")


def _fmt(v: float, digits: int = 1) -> str:
    return "-" if pd.isna(v) else f"{v:.{digits}f}"


def markdown(df: pd.DataFrame, title: str) -> str:
    head = "| dataset | partition | model | algorithm | seeds | ours (mean ± std) | paper | diff |"
    lines = [f"## {title}", "", head, "|---|---|---|---|---|---|---|---|"]
    for r in df.to_dict("records"):
        seeds = "-" if pd.isna(r["seeds"]) else str(int(r["seeds"]))
        mean = _fmt(r["ours"]) + ("" if pd.isna(r["std"]) else f" ± {r['std']:.1f}")
        failures = ((r["diverged"], "diverged"), (r["not_completed"], "failed"))
        notes = [f"{int(n)} {what}" for n, what in failures if n > 0]
        mean += f" ({', '.join(notes)})" if notes else ""
        diff = "-" if pd.isna(r["diff"]) else f"{r['diff']:+.1f}"
        lines.append(f"| {r['dataset']} | {r['partition']} | {r['model']} | {r['algorithm']} | {seeds} | {mean} | "
                     f"{_fmt(r['paper'])} | {diff} |")  # fmt: skip
    lines += ["", "Best test accuracy in %, the paper's metric (the best of the evaluations of the full test set).",
              "The published numbers' sources: hosfl_sim/reproduce/published.csv and reproduce.csv."]  # fmt: skip
    return "\n".join(lines) + "\n"


def figure(df: pd.DataFrame, path: Path, title: str) -> None:
    """Grouped bars per cell: ours (with the seeds' std) and the paper's, one colour per algorithm."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cells = list(dict.fromkeys(zip(df["dataset"], df["partition"], df["model"])))
    algos = list(dict.fromkeys(df["algorithm"]))
    fig, ax = plt.subplots(figsize=(max(6.0, 1.6 * len(cells) * max(1, len(algos)) / 3), 4.2))
    width = 0.8 / max(1, len(algos))
    colors = plt.get_cmap("tab10")
    for j, algo in enumerate(algos):
        sub = df[df["algorithm"] == algo].set_index(["dataset", "partition", "model"])
        x = np.arange(len(cells)) + (j - (len(algos) - 1) / 2) * width
        mean = [sub["ours"].get(c, np.nan) for c in cells]
        std = [sub["std"].get(c, np.nan) for c in cells]
        paper = [sub["paper"].get(c, np.nan) for c in cells]
        ax.bar(x, np.nan_to_num(mean), width, yerr=np.nan_to_num(std), color=colors(j), label=f"{algo} (ours)")
        ax.scatter(x, paper, marker="_", s=300, color="black", zorder=3, label="paper" if j == 0 else None)
    ax.set_xticks(np.arange(len(cells)), ["\n".join(c) for c in cells], fontsize=8)
    ax.set_ylabel("best test accuracy (%)")
    ax.set_title(title)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=150)
    plt.close(fig)


def write_report(sweep_dir: str | Path, table: str, title: str) -> tuple[pd.DataFrame, str]:
    """reproduce.md, reproduce.csv and reproduce.png into `sweep_dir`; returns the table and its Markdown."""
    sweep_dir = Path(sweep_dir)
    df = compare(sweep_dir, table)
    text = markdown(df, title)
    (sweep_dir / "reproduce.md").write_text(text)
    df.to_csv(sweep_dir / "reproduce.csv", index=False)
    figure(df, sweep_dir / "reproduce.png", title)
    return df, text
