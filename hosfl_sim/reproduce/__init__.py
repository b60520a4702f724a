"""`hosfl-sim reproduce TABLE`: the paper's tables run as resumable sweeps, reported beside the published numbers."""

from hosfl_sim.reproduce.report import compare, published, write_report
from hosfl_sim.reproduce.tables import TABLES, table_sweep

__all__ = ["TABLES", "compare", "published", "table_sweep", "write_report"]
