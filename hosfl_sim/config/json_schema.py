"""The JSON Schema of a scenario file, for editors: `hosfl-sim schema > scenario.schema.json`.

Generated from the models in `config.schema`; each field's description is its comment there (the comment on
its line, after the comment lines right above it), so an editor's hover shows what the source says.
`scenarios/scenario.schema.json` is this output, and every shipped scenario starts with the line that points
an editor at it (`# yaml-language-server: $schema=./scenario.schema.json`).
"""

from __future__ import annotations

import argparse
import ast
import inspect
import io
import json
import sys
import tokenize
from typing import Any

import hosfl_sim.config.schema as schema_module
from hosfl_sim.config.schema import Scenario

# draft-07: what editors' YAML language servers support (they warn on 2020-12); pydantic's output uses only
# keywords draft-07 has, with `$defs` reached by JSON pointer
DIALECT = "http://json-schema.org/draft-07/schema#"
SCHEMA_COMMENT = "# yaml-language-server: $schema=./scenario.schema.json"


def _trailing_comment(line: str) -> str:
    try:
        tokens = list(tokenize.generate_tokens(io.StringIO(line).readline))
    except (tokenize.TokenError, SyntaxError):
        return ""
    return next((t.string.lstrip("# ").strip() for t in tokens if t.type == tokenize.COMMENT), "")


def field_comments() -> dict[str, dict[str, str]]:
    """class name -> field name -> the field's comment in `config/schema.py`."""
    lines = inspect.getsource(schema_module).splitlines()
    out: dict[str, dict[str, str]] = {}
    for node in ast.parse("\n".join(lines)).body:
        if not isinstance(node, ast.ClassDef):
            continue
        fields = out.setdefault(node.name, {})
        for item in node.body:
            if not (isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name)):
                continue
            above: list[str] = []  # the comment lines right above the field
            i = item.lineno - 2
            while i >= 0 and lines[i].strip().startswith("#"):
                above.insert(0, lines[i].strip().lstrip("# ").strip())
                i -= 1
            parts = [" ".join(above), _trailing_comment(lines[item.lineno - 1])]
            text = ". ".join(p.rstrip(".") for p in parts if p)
            if text:
                fields[item.target.id] = text
    return out


def scenario_schema() -> dict[str, Any]:
    """The JSON Schema (draft-07) of a scenario file, with the fields' comments as descriptions."""
    schema = Scenario.model_json_schema()
    comments = field_comments()
    nodes = {Scenario.__name__: schema, **schema.get("$defs", {})}
    for name, node in nodes.items():
        for field, prop in node.get("properties", {}).items():
            text = comments.get(name, {}).get(field)
            if text and "description" not in prop:
                prop["description"] = text
    return {"$schema": DIALECT, "title": "hosfl_sim scenario", **{k: v for k, v in schema.items() if k != "title"}}


def schema_text() -> str:
    """`scenario_schema()` as the text `hosfl-sim schema` prints (and `scenarios/scenario.schema.json` holds)."""
    return json.dumps(scenario_schema(), indent=2) + "\n"


def _print_schema(args: argparse.Namespace) -> int:
    sys.stdout.write(schema_text())
    return 0


def schema_parser(parser: argparse.ArgumentParser) -> None:
    """`hosfl-sim schema`: print the JSON Schema of a scenario file."""
    parser.set_defaults(fn=_print_schema)
