"""The per-setting summary of a set of runs: final accuracy over seeds, budget used, bytes by category."""

from __future__ import annotations

import math
from collections.abc import Callable

import pandas as pd

from hosfl_sim.plots.load import BYTE_CATEGORIES, RunSet
from hosfl_sim.plots.units import human_bytes, human_seconds

# Final cumulative values averaged over seeds, in this order, when the runs recorded them.
_FINAL_COLUMNS = (
    ("round", "rounds"),
    ("samples_seen", "samples_seen"),
    ("sim_time_s", "sim_time_s"),
    ("wall_time_s", "wall_time_s"),
    *((f"bytes_{c}", f"bytes_{c}") for c in BYTE_CATEGORIES),
    ("bytes_total", "bytes_total"),
)


def final_rows(rounds: pd.DataFrame) -> pd.DataFrame:
    """One row per run: its last recorded round, with `test_acc`/`test_loss` from its last evaluated round."""
    r = rounds.sort_values(["run", "round"], kind="stable")
    last = r.groupby("run", sort=False).tail(1).set_index("run")
    for col in ("test_acc", "test_loss"):
        if col in r:
            evaluated = r.dropna(subset=[col]).groupby("run", sort=False).tail(1).set_index("run")[col]
            last[col] = evaluated.reindex(last.index)
    if "client_peak_mem_bytes" in r:  # peak over the whole run, not the last round's
        last["client_peak_mem_bytes"] = r.groupby("run")["client_peak_mem_bytes"].max().reindex(last.index)
    return last.reset_index()


def reach_target(rounds: pd.DataFrame, target: float) -> pd.DataFrame:
    """Per run: the first evaluated round whose test accuracy is >= `target` (a fraction), with the
    simulated time, samples and bytes spent by then; NaN where the run never reached it."""
    cols = ["round", "sim_time_s", "samples_seen", "bytes_total"]
    out = []
    for run, r in rounds.sort_values(["run", "round"]).groupby("run", sort=False):
        hit = r[r["test_acc"] >= target]
        row = hit.iloc[0] if len(hit) else None
        out.append(
            {"run": run, **{f"{c}_to_target": (row[c] if row is not None and c in r else math.nan) for c in cols}}
        )
    return pd.DataFrame(out)


def summary_table(runset: RunSet, target: float | None = None) -> pd.DataFrame:
    """One row per setting, in `runset.settings` order.

    Columns: setting, seeds (runs), status (e.g. '2 completed'), test_acc_pct_mean/std (final test
    accuracy in %, mean and sample std over seeds; std is NaN for one seed), then the mean over seeds
    of each run's final rounds, samples_seen, sim_time_s (if recorded), wall_time_s, bytes_<category>,
    bytes_total and client_peak_mem_bytes (peak over the run, if recorded). With `target` (a test
    accuracy fraction), also the mean over seeds of <round, sim_time_s, samples_seen, bytes_total>_to_target
    and `reached` (how many seeds reached it).
    """
    if runset.rounds.empty:
        return pd.DataFrame(columns=["setting", "seeds", "status", "test_acc_pct_mean", "test_acc_pct_std"])
    final = final_rows(runset.rounds)
    if target is not None:
        final = final.merge(reach_target(runset.rounds, target), on="run", how="left")
    rows = []
    for setting in runset.settings:
        f = final[final["setting"] == setting]
        if f.empty:
            continue
        counts = f["status"].value_counts()
        row = {
            "setting": setting,
            "seeds": len(f),
            "status": ", ".join(f"{n} {s}" for s, n in counts.items()),
            "test_acc_pct_mean": 100 * f["test_acc"].mean() if "test_acc" in f else math.nan,
            "test_acc_pct_std": 100 * f["test_acc"].std(ddof=1) if "test_acc" in f else math.nan,
        }
        for col, name in _FINAL_COLUMNS:
            if col in f:
                row[name] = f[col].mean()
        if "client_peak_mem_bytes" in f:
            row["client_peak_mem_bytes"] = f["client_peak_mem_bytes"].mean()
        if target is not None:
            row["target"] = target
            row["reached"] = int(f["round_to_target"].notna().sum())
            for c in ("round", "sim_time_s", "samples_seen", "bytes_total"):
                row[f"{c}_to_target"] = f[f"{c}_to_target"].mean()  # over the seeds that reached it
        rows.append(row)
    return pd.DataFrame(rows)


def _render(headers: list[str], rows: list[list[str]]) -> str:
    """Plain aligned text: the first column left-aligned, the others right-aligned."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]

    def line(cells: list[str]) -> str:
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

    return "\n".join([line(headers), line(["-" * w for w in widths]), *(line(r) for r in rows)])


def _acc(mean: float, std: float) -> str:
    if not math.isfinite(mean):
        return "-"
    return f"{mean:.2f} ± {std:.2f}" if math.isfinite(std) else f"{mean:.2f}"


def _present(df: pd.DataFrame, col: str) -> bool:
    return col in df and bool(df[col].notna().any())


def _bytes_cell(col: str) -> Callable[[pd.Series], str]:
    """A communication cell: the column's bytes, or '-' where the setting sent none."""
    return lambda r: human_bytes(r[col]) if r[col] > 0 else "-"


def format_table(df: pd.DataFrame) -> str:
    """Two plain-text blocks for the terminal: results per setting, then bytes by category."""
    if df.empty:
        return "(no runs)"
    results: list[tuple[str, Callable[[pd.Series], str]]] = [
        ("setting", lambda r: str(r["setting"])),
        ("seeds", lambda r: str(int(r["seeds"]))),
        ("test acc % (mean ± std)", lambda r: _acc(r["test_acc_pct_mean"], r["test_acc_pct_std"])),
    ]
    if _present(df, "rounds"):
        results.append(("rounds", lambda r: f"{r['rounds']:,.0f}"))
    if _present(df, "samples_seen"):
        results.append(("samples", lambda r: f"{r['samples_seen']:,.0f}"))
    if _present(df, "sim_time_s"):
        results.append(("sim time", lambda r: human_seconds(r["sim_time_s"])))
    if _present(df, "wall_time_s"):
        results.append(("wall time", lambda r: human_seconds(r["wall_time_s"])))
    if _present(df, "client_peak_mem_bytes"):
        results.append(("client peak mem", lambda r: human_bytes(r["client_peak_mem_bytes"])))
    if "target" in df:
        pct = f"{100 * df['target'].iloc[0]:g}%"

        def _to(r: pd.Series, col: str, fmt: Callable[[float], str]) -> str:
            v = r[col]
            return "never" if not math.isfinite(v) else fmt(v) + ("" if r["reached"] == r["seeds"] else "*")

        results.append((f"rounds to {pct}", lambda r: _to(r, "round_to_target", lambda v: f"{v:,.0f}")))
        if _present(df, "sim_time_s_to_target") or _present(df, "sim_time_s"):
            results.append((f"sim time to {pct}", lambda r: _to(r, "sim_time_s_to_target", human_seconds)))
        results.append((f"bytes to {pct}", lambda r: _to(r, "bytes_total_to_target", human_bytes)))
    if (df["status"] != df["seeds"].map(lambda n: f"{n} completed")).any():
        results.append(("status", lambda r: str(r["status"])))

    # Only the ledger categories some setting used.
    comm: list[tuple[str, Callable[[pd.Series], str]]] = [("setting", lambda r: str(r["setting"]))]
    for c in BYTE_CATEGORIES:
        col = f"bytes_{c}"
        if _present(df, col) and (df[col].fillna(0) > 0).any():
            comm.append((c, _bytes_cell(col)))
    if _present(df, "bytes_total"):
        comm.append(("total", lambda r: human_bytes(r["bytes_total"])))

    records = [r for _, r in df.iterrows()]
    blocks = [_render([h for h, _ in results], [[f(r) for _, f in results] for r in records])]
    if len(comm) > 1:
        title = "communication by category (final, mean over seeds)"
        blocks.append(title + "\n" + _render([h for h, _ in comm], [[f(r) for _, f in comm] for r in records]))
    return "\n\n".join(blocks)
