"""HO-SFL and its baselines as plain torch code, runnable on any `Backend`.

Importing this package registers every built-in algorithm (each module's `@register`); see `registry`
for adding one from another package.
"""

from hosfl_sim.algorithms import (  # noqa: F401  (imported to register them)
    centralized,
    cse_fsl,
    dsl_aux,
    fedavg,
    fedsplitx,
    fsl_sage,
    fsl_sage_persistent,
    heron_sfl,
    hosfl,
    hosl,
    local_loss_sl,
    locfedmix_sl,
    mezo,
    mu_splitfed,
    sfl,
    sfl_zo,
    sfl_zo_v1,
    splitfed_v1,
    vanilla_sl,
    zo_fl,
)
from hosfl_sim.algorithms.backend import Backend
from hosfl_sim.algorithms.base import Algorithm, ClientRecord, RoundResult
from hosfl_sim.algorithms.registry import ALGORITHMS, get_algorithm, register
from hosfl_sim.algorithms.task import TaskSpec

__all__ = ["ALGORITHMS", "Algorithm", "Backend", "ClientRecord", "RoundResult", "TaskSpec", "get_algorithm", "register"]
