"""`hosfl-sim reproduce TABLE`: the paper's tables run as resumable sweeps, reported beside the published numbers."""

from hosfl_sim.reproduce.report import compare, published, write_report
from hosfl_sim.reproduce.tables import TABLES, preflight, table_sweep

__all__ = ["TABLES", "compare", "preflight", "published", "table_sweep", "write_report"]
