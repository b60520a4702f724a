"""The package's code shape, checked with `ast` over every module of `hosfl_sim/`.

- A long module says why. A module of more than 300 lines starts with one comment line, before its docstring:

      # Over 300 lines: <reason>.

  the reason not empty, the line ending in a full stop (e.g. `# Over 300 lines: the whole scenario tree in one
  place, so a reader sees every field.`). A module of 300 lines or fewer carries no such line: it has no reason to.
- Functions are short: no function or method, nested ones included, is longer than 60 lines, counted from its
  `def` to its last line (decorators excluded). `PENDING` exempts the ones still being rewritten; it can only
  shrink (an entry whose function is short again, or gone, fails the test until it is removed).
- Bytes are the ledger's: no module under `hosfl_sim/algorithms/` computes sizes (`.nbytes`, `nbytes(...)`,
  `.itemsize`, `element_size(...)`); only `hosfl_sim/comm/` turns messages into bytes.
- Roles are called by passing the method itself, `backend.client(w, HOSFLClient.anchor, ...)`, never by its name:
  no `.client(...)` or `.server(...)` call in `hosfl_sim/`, `bench/` or `tests/` is given a string as its method
  (the second positional argument of `client`, the first of `server`, or `method=`), whatever it is called on
  (`backend`, `b`, `self.backend`, `super()` in a wrapping backend); and `hosfl_sim/` looks up no method by name
  (`getattr(self, method)`, `getattr(obj, name)(...)`): `Role.invoke` in `algorithms/roles.py` calls
  `method(self, ...)`.

Each checker takes the repository root (the folder holding `hosfl_sim/`) and returns its findings; the self-tests
run each one on a small made-up tree under tmp_path, so that every check is seen to fail.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import hosfl_sim

REPO = Path(hosfl_sim.__file__).resolve().parent.parent
PACKAGE = "hosfl_sim"
MAX_MODULE_LINES = 300
MAX_FUNCTION_LINES = 60
HEADER = re.compile(r"# Over 300 lines: (?P<reason>.*)\.")

# Functions over the limit under hosfl_sim/algorithms/, which is being rewritten: (path, qualified name). Only ever
# remove entries: the test fails once an entry's function is 60 lines or fewer (or gone), until it is removed here.
PENDING: set[tuple[str, str]] = set()

_BYTE_ATTRIBUTES = {"nbytes", "itemsize", "element_size"}  # `x.nbytes`, `x.itemsize`, `t.element_size()`
_BYTE_FUNCTIONS = {"nbytes", "element_size"}  # `nbytes(x)`, `element_size(t)`
_ROLE_CALLS = {"client": 1, "server": 0}  # backend call -> position of its method argument


def _modules(root: Path, folder: str) -> list[tuple[str, str, ast.Module]]:
    """(path relative to root, source, tree) of every module under root/folder."""
    found = []
    for path in sorted((root / folder).rglob("*.py")):
        source = path.read_text(encoding="utf-8")
        found.append((path.relative_to(root).as_posix(), source, ast.parse(source, filename=str(path))))
    return found


def _in_order(nodes):
    """AST nodes in the order of the source."""
    return sorted(nodes, key=lambda n: (n.lineno, n.col_offset))


# ----------------------------------------------------------------------------- the checkers


def long_modules(root: Path) -> list[str]:
    """Modules of the package whose first line does not match their length: over 300 lines without the
    `# Over 300 lines: <reason>.` line, or 300 lines or fewer with it."""
    found = []
    for rel, source, _ in _modules(root, PACKAGE):
        lines = source.splitlines()
        header = HEADER.fullmatch(lines[0].rstrip()) if lines else None
        if len(lines) > MAX_MODULE_LINES and not (header and header["reason"].strip(" .")):
            found.append(f"{rel}: {len(lines)} lines; its first line must be `# Over 300 lines: <reason>.`")
        elif len(lines) <= MAX_MODULE_LINES and lines and lines[0].startswith("# Over 300 lines"):
            found.append(f"{rel}: {len(lines)} lines; drop its `# Over 300 lines` line")
    return found


def _functions(node: ast.AST, prefix: str = ""):
    """(qualified name, def) of every function under `node`: methods as Class.name, nested ones as outer.inner."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            name = f"{prefix}{child.name}"
            if not isinstance(child, ast.ClassDef):
                yield name, child
            yield from _functions(child, name + ".")
        else:
            yield from _functions(child, prefix)


def long_functions(root: Path) -> dict[tuple[str, str], str]:
    """(path, qualified name) -> `path:line name (N lines)` for every function of the package over 60 lines, from
    its `def` to its last line (a decorator is not counted: `lineno` is the `def` line)."""
    found = {}
    for rel, _, tree in _modules(root, PACKAGE):
        for name, fn in _functions(tree):
            length = fn.end_lineno - fn.lineno + 1
            if length > MAX_FUNCTION_LINES:
                found[(rel, name)] = f"{rel}:{fn.lineno} {name} ({length} lines)"
    return found


def pending_problems(found: dict[tuple[str, str], str], pending: set[tuple[str, str]]) -> list[str]:
    """Exemptions no longer needed (the function is 60 lines or fewer, or gone) or outside hosfl_sim/algorithms/."""
    problems = [f"{p} {n}: 60 lines or fewer (or gone): remove it" for p, n in sorted(pending) if (p, n) not in found]
    problems += [
        f"{p} {n}: outside {PACKAGE}/algorithms/"
        for p, n in sorted(pending)
        if not p.startswith(f"{PACKAGE}/algorithms/")
    ]
    return problems


def byte_arithmetic(root: Path) -> list[str]:
    """`path:line what` for every size computation in the package's algorithms."""
    found = []
    for rel, _, tree in _modules(root, f"{PACKAGE}/algorithms"):
        for node in _in_order(n for n in ast.walk(tree) if isinstance(n, (ast.Attribute, ast.Name))):
            if isinstance(node, ast.Attribute) and node.attr in _BYTE_ATTRIBUTES:
                found.append(f"{rel}:{node.lineno} .{node.attr}")
            elif isinstance(node, ast.Name) and node.id in _BYTE_FUNCTIONS:
                found.append(f"{rel}:{node.lineno} {node.id}")
    return found


def _string_method(call: ast.Call) -> bool:
    """A backend call (`.client(worker, method, ...)`, `.server(method, ...)`) given its method by name."""
    if not isinstance(call.func, ast.Attribute) or call.func.attr not in _ROLE_CALLS:
        return False
    position = _ROLE_CALLS[call.func.attr]
    given = [call.args[position]] if len(call.args) > position else []
    given += [k.value for k in call.keywords if k.arg == "method"]
    return any(isinstance(a, ast.Constant) and isinstance(a.value, str) for a in given)


def string_dispatch(root: Path) -> list[str]:
    """`path:line code` for every backend call given a method name in the package, bench/ and tests/."""
    found = []
    for folder in (PACKAGE, "bench", "tests"):
        if not (root / folder).is_dir():
            continue
        for rel, _, tree in _modules(root, folder):
            found += [
                f"{rel}:{n.lineno} {ast.unparse(n)[:100]}"
                for n in _in_order(n for n in ast.walk(tree) if isinstance(n, ast.Call) and _string_method(n))
            ]
    return found


def _is_getattr(node: ast.AST) -> bool:
    return isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "getattr"


def getattr_dispatch(root: Path) -> list[str]:
    """`path:line code` for every method looked up by name in the package: `getattr(x, method...)` (a variable
    named for a method), `getattr(x, name)(...)` (called at once); and `Role.invoke` not calling `method(self, ...)`."""
    found = []
    for rel, _, tree in _modules(root, PACKAGE):
        lookups = {n.func for n in ast.walk(tree) if isinstance(n, ast.Call) and _is_getattr(n.func)}  # called
        lookups |= {
            n
            for n in ast.walk(tree)
            if _is_getattr(n) and len(n.args) >= 2 and isinstance(n.args[1], ast.Name) and "method" in n.args[1].id
        }
        found += [f"{rel}:{n.lineno} {ast.unparse(n)[:100]}" for n in _in_order(lookups)]
    roles = root / PACKAGE / "algorithms" / "roles.py"
    invoke = [
        fn
        for cls in (ast.parse(roles.read_text(encoding="utf-8")).body if roles.exists() else [])
        if isinstance(cls, ast.ClassDef) and cls.name == "Role"
        for fn in cls.body
        if isinstance(fn, ast.FunctionDef) and fn.name == "invoke"
    ]
    calls_method = any(
        isinstance(n, ast.Call)
        and isinstance(n.func, ast.Name)
        and n.func.id == "method"
        and n.args
        and isinstance(n.args[0], ast.Name)
        and n.args[0].id == "self"
        for fn in invoke
        for n in ast.walk(fn)
    )
    if not calls_method:
        found.append(f"{roles.relative_to(root).as_posix()}: Role.invoke does not call `method(self, ...)`")
    return found


# ----------------------------------------------------------------------------- the package


def test_long_modules_say_why():
    found = long_modules(REPO)
    assert not found, "module length (see this test's docstring):\n" + "\n".join(found)


def test_no_function_is_over_60_lines():
    found = long_functions(REPO)
    offenders = [line for key, line in sorted(found.items()) if key not in PENDING]
    assert not offenders, "functions over 60 lines (split them into named helpers):\n" + "\n".join(offenders)


def test_the_pending_exemptions_only_shrink():
    found = pending_problems(long_functions(REPO), PENDING)
    assert not found, "PENDING (see its comment):\n" + "\n".join(found)


def test_algorithms_leave_bytes_to_the_ledger():
    found = byte_arithmetic(REPO)
    assert not found, "sizes computed in algorithms (hosfl_sim/comm/ prices messages):\n" + "\n".join(found)


def test_roles_are_called_with_the_method_itself():
    found = string_dispatch(REPO) + getattr_dispatch(REPO)
    assert not found, "methods named by a string (pass the method: HOSFLClient.anchor):\n" + "\n".join(found)


# ----------------------------------------------------------------------------- each check can fail


def _tree(root: Path, files: dict[str, str]) -> Path:
    for rel, source in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(source)
    return root


_ROLES = "class Role:\n    def invoke(self, method, *args):\n        return method(self, *args)\n"


def test_a_long_module_needs_its_reason(tmp_path):
    body = "x = 1\n" * 300
    root = _tree(
        tmp_path,
        {
            "hosfl_sim/short.py": body,
            "hosfl_sim/bare.py": body + "y = 2\n",
            "hosfl_sim/empty_reason.py": "# Over 300 lines: .\n" + body,
            "hosfl_sim/sub/reasoned.py": "# Over 300 lines: every field in one place.\n" + body,
            "hosfl_sim/stale.py": "# Over 300 lines: it was long.\n" + "x = 1\n" * 10,
        },
    )
    found = long_modules(root)
    assert [f.split(":")[0] for f in found] == ["hosfl_sim/bare.py", "hosfl_sim/empty_reason.py", "hosfl_sim/stale.py"]
    assert "301 lines" in found[0]


def test_a_long_function_is_named_with_its_length(tmp_path):
    lines = "".join(f"    x{i} = {i}\n" for i in range(59))
    nested = "".join(f"            y{i} = {i}\n" for i in range(60))
    root = _tree(
        tmp_path,
        {
            "hosfl_sim/f.py": (
                f"@decorator\n@another\ndef fits():\n{lines}\n"  # 60 lines from `def`: the decorators do not count
                f"def over():\n{lines}    return 1\n\n"  # 61
                f"class C:\n    def method(self):\n        def inner():\n{nested}\n        return inner\n"
            ),
        },
    )
    found = long_functions(root)
    assert sorted(found) == [
        ("hosfl_sim/f.py", "C.method"),
        ("hosfl_sim/f.py", "C.method.inner"),
        ("hosfl_sim/f.py", "over"),
    ]
    assert found[("hosfl_sim/f.py", "over")] == "hosfl_sim/f.py:64 over (61 lines)"
    assert found[("hosfl_sim/f.py", "C.method.inner")].endswith("inner (61 lines)")


def test_a_pending_exemption_must_still_be_needed():
    found = {("hosfl_sim/algorithms/a.py", "A.run_round"): "...", ("hosfl_sim/cli.py", "main"): "..."}
    pending = {("hosfl_sim/algorithms/a.py", "A.run_round"), ("hosfl_sim/algorithms/b.py", "B.step")}
    assert pending_problems(found, pending) == [
        "hosfl_sim/algorithms/b.py B.step: 60 lines or fewer (or gone): remove it"
    ]
    assert pending_problems(found, {("hosfl_sim/cli.py", "main")}) == [
        "hosfl_sim/cli.py main: outside hosfl_sim/algorithms/"
    ]


def test_bytes_computed_in_an_algorithm_are_found(tmp_path):
    root = _tree(
        tmp_path,
        {
            "hosfl_sim/algorithms/a.py": (
                '"""The ledger prices arrays by .nbytes and .itemsize."""\n'  # words, not code
                "def cost(x, t):\n"
                "    size = x.nbytes + x.itemsize\n"
                "    return size + nbytes(x) + t.element_size() + element_size(t)\n"
            ),
            "hosfl_sim/comm/ledger.py": "def nbytes(x):\n    return x.nbytes\n",  # the ledger may
        },
    )
    assert byte_arithmetic(root) == [
        "hosfl_sim/algorithms/a.py:3 .nbytes",
        "hosfl_sim/algorithms/a.py:3 .itemsize",
        "hosfl_sim/algorithms/a.py:4 nbytes",
        "hosfl_sim/algorithms/a.py:4 .element_size",
        "hosfl_sim/algorithms/a.py:4 element_size",
    ]


def test_a_method_named_by_a_string_is_found(tmp_path):
    root = _tree(
        tmp_path,
        {
            "hosfl_sim/algorithms/roles.py": _ROLES,
            "hosfl_sim/algorithms/a.py": (
                "def run(backend, w):\n"
                "    backend.client(w, Client.anchor, 1)\n"  # the method itself: fine
                '    backend.client(w, "anchor", 1)\n'
                '    return backend.server("step", w)\n'
            ),
            "bench/b.py": (
                "def f(self, b):\n"
                '    self.backend.client(0, method="probe")\n'
                '    b.server(Server.step, "x")\n'  # a string argument, not the method: fine
            ),
            "tests/t.py": 'def f():\n    super().client(0, "probe")\n',
        },
    )
    found = string_dispatch(root)
    assert [f.split(" ")[0] for f in found] == [
        "hosfl_sim/algorithms/a.py:3",
        "hosfl_sim/algorithms/a.py:4",
        "bench/b.py:2",
        "tests/t.py:2",
    ]
    assert found[0].endswith("backend.client(w, 'anchor', 1)")
    assert getattr_dispatch(root) == []


def test_a_method_looked_up_by_name_is_found(tmp_path):
    dispatch = "class Role:\n    def invoke(self, method, *args):\n        return getattr(self, method)(*args)\n"
    root = _tree(
        tmp_path,
        {
            "hosfl_sim/algorithms/roles.py": dispatch,
            "hosfl_sim/runtime/r.py": (
                "def f(role, name, method_name):\n"
                "    value = getattr(role, name, None)\n"  # an attribute, not a call: fine
                "    fn = getattr(role, method_name)\n"
                '    return getattr(role, "probe")(value)\n'
            ),
        },
    )
    found = getattr_dispatch(root)
    assert [f.split(" ")[0] for f in found] == [
        "hosfl_sim/algorithms/roles.py:3",
        "hosfl_sim/runtime/r.py:3",
        "hosfl_sim/runtime/r.py:4",
        "hosfl_sim/algorithms/roles.py:",
    ]
    assert found[-1].endswith("Role.invoke does not call `method(self, ...)`")
    _tree(tmp_path, {"hosfl_sim/algorithms/roles.py": _ROLES, "hosfl_sim/runtime/r.py": ""})
    assert getattr_dispatch(root) == []
