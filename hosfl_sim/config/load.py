"""YAML -> typed, validated `Scenario`, with dotted `KEY=VALUE` overrides."""

from __future__ import annotations

import copy
import hashlib
import json
import re
from collections.abc import Hashable
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

from hosfl_sim.config.schema import ConfigError, Scenario
from hosfl_sim.config.validate import validate

# the shipped scenarios: the repository's scenarios/ (hosfl_sim/scenarios links to it; a wheel carries a copy)
SCENARIO_DIR = Path(__file__).resolve().parents[1] / "scenarios"


def parse_value(text: str) -> Any:
    """Override values are YAML scalars or flow collections: `0.5`, `1e-3`, `true`, `[1, 2]`, `adamw`."""
    try:
        return yaml.load(text, Loader=_StrictLoader)
    except yaml.YAMLError:
        return text


_DOTTED = re.compile(r"[A-Za-z_]\w*(\[\d+\])*(\.[A-Za-z_]\w*(\[\d+\])*)*")


def apply_override(data: dict, dotted: str, value: Any) -> None:
    """Set `a.b[1].c` in a nested dict/list structure, creating mappings as needed."""
    if not _DOTTED.fullmatch(dotted):
        raise ConfigError(dotted, value, "a dotted key such as federation.rounds or algorithms[0].mu")
    node: Any = data
    parts = dotted.replace("]", "").replace("[", ".").split(".")
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise ConfigError(dotted, value, f"an index below {len(node)} at '{part}'")
            if last:
                node[int(part)] = value
            else:
                node = node[int(part)]
            continue
        if last:
            node[part] = value
        else:
            node = node.setdefault(part, {})
            if not isinstance(node, (dict, list)):
                raise ConfigError(dotted, value, f"'{part}' to be a mapping or list")


def resolve_path(name_or_path: str) -> Path:
    """A YAML path, or the name of a file in `scenarios/`."""
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml") and (p.exists() or p.is_symlink()):
        return p
    candidate = SCENARIO_DIR / f"{name_or_path}.yaml"
    if candidate.exists():
        return candidate
    known = ", ".join(sorted(x.stem for x in SCENARIO_DIR.glob("*.yaml")))
    raise ConfigError("scenario", name_or_path, f"a YAML file or one of: {known}")


class _StrictLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing a key given twice in one mapping (PyYAML would keep the last silently), and
    reading `1e-3` and `1e6` as numbers, as YAML 1.2 and every other tool do (PyYAML's YAML 1.1 wants `1.0e-3`)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if not isinstance(key, Hashable):
                continue  # the base constructor reports those
            if key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep)


_EXPONENT_FLOAT = re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$")
_StrictLoader.add_implicit_resolver("tag:yaml.org,2002:float", _EXPONENT_FLOAT, list("-+0123456789."))


MAX_FILE_BYTES = 1 << 20  # a scenario is a page of YAML; anything larger is not one
MAX_NODES = 100_000  # YAML nodes after aliases are expanded: a billion-laughs file stops here


def _expanded_size(node: yaml.Node, memo: dict[int, int]) -> int:
    """Nodes the YAML tree holds once aliases are expanded, counted without expanding them (the node graph is a
    DAG; each node's count is taken once)."""
    key = id(node)
    if key not in memo:
        memo[key] = MAX_NODES + 1  # a node reached again while counting it: a recursive alias
        children: list[yaml.Node] = []
        if isinstance(node, yaml.SequenceNode):
            children = list(node.value)
        elif isinstance(node, yaml.MappingNode):
            children = [n for pair in node.value for n in pair]
        total = 1
        for child in children:
            total += _expanded_size(child, memo)
            if total > MAX_NODES:
                break
        memo[key] = total
    return memo[key]


def _read_scenario_text(path: Path) -> str:
    """The file's text, if it is a readable regular UTF-8 file of at most MAX_FILE_BYTES (a FIFO is never opened)."""
    if not path.is_file():
        raise ConfigError("scenario", str(path), "a regular YAML file (this is a directory, a pipe or a device)")
    try:
        with path.open("rb") as f:
            raw = f.read(MAX_FILE_BYTES + 1)
    except OSError as e:
        raise ConfigError("scenario", str(path), f"a readable file ({e.strerror})") from None
    if len(raw) > MAX_FILE_BYTES:
        raise ConfigError("scenario", str(path), f"a YAML file of at most {MAX_FILE_BYTES:,} bytes")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError("scenario", str(path), "a UTF-8 text file (this one is binary)") from None


def load_yaml_file(path: Path) -> Any:
    """A scenario or sweep file's YAML, with every check that keeps a bad file to one line: a regular readable
    UTF-8 file of bounded size, valid YAML without duplicate keys, bounded depth and alias expansion."""
    text = _read_scenario_text(path)
    try:
        node = yaml.compose(text, Loader=_StrictLoader)
        if node is not None and _expanded_size(node, {}) > MAX_NODES:
            expected = f"at most {MAX_NODES:,} values once YAML aliases are expanded"
            raise ConfigError(str(path), "a YAML tree too large", expected)
        data = yaml.load(text, Loader=_StrictLoader)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        problem = " ".join(str(getattr(e, "problem", None) or e).split())  # one line, whatever YAML says
        raise ConfigError(where, "malformed YAML", f"valid YAML ({problem})") from None
    except RecursionError:
        raise ConfigError(str(path), "YAML nested too deeply", "a file of ordinary depth") from None
    return data


def load_raw(name_or_path: str) -> dict:
    path = resolve_path(name_or_path)
    data = load_yaml_file(path)
    if data is None:  # an empty or comment-only file: never run the defaults in its name
        raise ConfigError(str(path), "an empty file", "a scenario: a mapping with task, algorithms, federation, ...")
    if not isinstance(data, dict):
        raise ConfigError(str(path), data, "a mapping at the top level")
    data.setdefault("name", path.stem)
    return data


def load_scenario(name_or_path: str | dict, overrides: list[str] | None = None) -> Scenario:
    """Load, override and validate. Raises ConfigError with the offending field."""
    data = copy.deepcopy(name_or_path) if isinstance(name_or_path, dict) else load_raw(name_or_path)  # ours to edit
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError("override", item, "KEY=VALUE with a dotted KEY")
        key, text = item.split("=", 1)
        apply_override(data, key.strip(), parse_value(text))
    scenario = validate(Scenario, data)
    scenario.check()
    return scenario


def to_dict(obj: Any) -> Any:
    """A config as plain dicts and lists (what run hashes and manifests hold); anything else as it is."""
    return obj.model_dump() if isinstance(obj, BaseModel) else obj


def config_hash(obj: Any) -> str:
    """sha256 of the canonical JSON of a resolved config."""
    text = json.dumps(to_dict(obj), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def describe(name_or_path: str) -> str:
    """The scenario's one-line description (its `description`, else its first comment line)."""
    path = resolve_path(name_or_path)
    text = path.read_text()
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError:
        data = {}
    if isinstance(data, dict) and data.get("description"):
        return str(data["description"]).strip().splitlines()[0]
    for line in text.splitlines():
        if line.startswith("#") and not line.startswith("# yaml-language-server:"):  # that one is for editors
            return line.lstrip("# ").strip()
    return ""
