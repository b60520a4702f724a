"""HO-SFL and its baselines as plain torch code, runnable on any `Backend`."""

from hosfl_sim.algorithms.backend import Backend
from hosfl_sim.algorithms.base import Algorithm, ClientRecord, RoundResult
from hosfl_sim.algorithms.centralized import Centralized
from hosfl_sim.algorithms.fedavg import FedAvg
from hosfl_sim.algorithms.fsl_sage import FSLSAGE
from hosfl_sim.algorithms.fsl_sage_persistent import FSLSAGEPersistent
from hosfl_sim.algorithms.hosfl import HOSFL
from hosfl_sim.algorithms.mezo import MeZO
from hosfl_sim.algorithms.mu_splitfed import MUSplitFed
from hosfl_sim.algorithms.sfl import SFL
from hosfl_sim.algorithms.sfl_zo import SFLZO
from hosfl_sim.algorithms.sfl_zo_v1 import SFLZOV1
from hosfl_sim.algorithms.splitfed_v1 import SplitFedV1
from hosfl_sim.algorithms.task import TaskSpec
from hosfl_sim.algorithms.zo_fl import ZOFL
from hosfl_sim.config import ConfigError

ALGORITHMS: dict[str, type[Algorithm]] = {
    cls.name: cls
    for cls in (
        HOSFL,
        SFL,
        SFLZO,
        FedAvg,
        ZOFL,
        Centralized,
        MeZO,
        SplitFedV1,
        MUSplitFed,
        FSLSAGE,
        SFLZOV1,
        FSLSAGEPersistent,
    )
}


def get_algorithm(name: str, path: str = "algorithms[].name") -> type[Algorithm]:
    if name not in ALGORITHMS:
        raise ConfigError(path, name, "one of " + ", ".join(ALGORITHMS))
    return ALGORITHMS[name]


__all__ = ["ALGORITHMS", "Algorithm", "Backend", "ClientRecord", "RoundResult", "TaskSpec", "get_algorithm"]
