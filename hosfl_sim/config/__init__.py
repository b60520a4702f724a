"""Scenario schema, YAML loading and overrides. Imports nothing else of hosfl_sim."""

from hosfl_sim.config.json_schema import scenario_schema, schema_parser
from hosfl_sim.config.load import config_hash, describe, load_scenario, resolve_path, to_dict
from hosfl_sim.config.schema import (
    AlgorithmConfig,
    ConfigError,
    DatasetConfig,
    FederationConfig,
    ModelConfig,
    OptimizerConfig,
    PartitionConfig,
    RuntimeConfig,
    Scenario,
    TaskConfig,
)

__all__ = [
    "AlgorithmConfig",
    "ConfigError",
    "DatasetConfig",
    "FederationConfig",
    "ModelConfig",
    "OptimizerConfig",
    "PartitionConfig",
    "RuntimeConfig",
    "Scenario",
    "TaskConfig",
    "config_hash",
    "describe",
    "load_scenario",
    "resolve_path",
    "scenario_schema",
    "schema_parser",
    "to_dict",
]
