"""The scenario models keep every run's identity: `to_dict` of a scenario, and so each run's hash (resume checks
it, sweeps skip by it), is what it was before the configs moved to pydantic."""

from __future__ import annotations

import pytest

from hosfl_sim.config import load_scenario, to_dict
from hosfl_sim.config.identity import run_hash

# (scenario, overrides) -> run_hash of (algorithm 0, seed 0) and of (the last algorithm, seed 0), as computed by
# the dataclass configs. Adding a field to the hashed sections (task, algorithms, federation, system) changes them.
PINNED = [
    ("quickstart", [], "c77e6b59d215f67ad22eab6ea8480389c5708fb44f05d03d19dd322509cc1d0a",
     "a47553af33fb0b05c96a9c4a1a975daa6d64acc499a115390a927ad9aea5b732"),
    ("noniid", [], "5e69da9d0c3a58cade1b5aeb33fba92e8a8213e09ba2e4c591f15d77d21fa86b",
     "31760abb79f5be526b5dbdd95ef906accb32cb3e6ce2ea70c7c17517ab586d74"),
    ("churn", [], "62d6ebb6c3fe8a616fabd910e9feffd1c64a8ceac619ba911019df71dd3d48e5",
     "0e4f71b46eab243803f4ee7572febfe5c32eedd22474549a9ff1657a2fdee9cc"),
    ("edge", [], "135f86bcc19b0e2d50e14d484ef35c29aba6ae893d810d9edeef3a7d29526f3a",
     "c78b2db0e486f6eb9c0522afe11c61c0ac1d1e62643cf75b7d232c4a4ede16ab"),
    ("stragglers", [], "d10c7234da460357bcf607a7cc3fe057dfa14225acdb80d05c09682e55277be4",
     "747f7693e51c5320582f05d157a5711bbdf2fc7fbce8deececd822524488206d"),
    ("cifar10_resnet18_noniid", [], "3dbdd6ff588339da2c54f6f099801693b93de5fda74659d13de6dcd8e0ec3fe9",
     "1305348546a514e444c579e780ba539496c29d410af4fab415e3aa6f665d35b3"),
    ("sst2_opt125m", [], "7db7baf0e977bcd340e588c9de3702b5a513939f328a5644f665a6ed98d4ce07",
     "61776559b18b7cd61bf100d1aa60495e6717b3acb2b363486a505a92f318db6a"),
    # integers where numbers are expected become floats, integral floats where integers are expected integers
    (
        "noniid",
        ["algorithms[0].mu=1", "task.partition.alpha=2", "federation.rounds=30.0",
         "system.uplink_bps={kind: uniform, low: 5, high: 10}"],
        "bdb8e2cc1e8c9a3ec06597d1b6a93b5129e061881ad16e31746f8653369f3062",
        None,
    ),
]  # fmt: skip


@pytest.mark.parametrize(("name", "overrides", "first", "last"), PINNED)
def test_run_hashes_of_shipped_scenarios_are_unchanged(name, overrides, first, last):
    sc = load_scenario(name, overrides)
    d = to_dict(sc)
    assert run_hash(d, 0, sc.seeds[0]) == first
    if last is not None:
        assert run_hash(d, len(sc.algorithms) - 1, sc.seeds[0]) == last
