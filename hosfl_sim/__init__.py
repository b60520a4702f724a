"""hosfl_sim: a Ray-based simulator of split federated learning with backprop-free clients."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("hosfl_sim")
except PackageNotFoundError:  # a checkout that was never installed
    __version__ = "0+unknown"
