"""The package's shape: modules import only downward, the core never imports the CLI, modules stay small.

Every import is counted, including those inside functions (they are how a
circle hides). The graph is built from the source with ``ast``, so the test
needs nothing imported and fails on a new circle whatever code path runs.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "boomerang_cli"
MAX_LINES = 450
#: Lines of a function's body (after its docstring), and of a CLI command's: a command parses,
#: builds the request, calls the core and renders, so anything longer does the core's work.
MAX_FUNCTION_LINES = 80
MAX_COMMAND_LINES = 40
#: Entry points above everything: they exist to start the CLI.
ENTRY_POINTS = {"boomerang_cli.__main__"}


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """Package modules ``name`` imports (anywhere in the file), as module names."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            # ``from pkg import sub`` imports the submodule; ``from mod import name`` the module.
            targets = [f"{mod}.{a.name}" if f"{mod}.{a.name}" in modules else mod for a in node.names]
        for t in targets:
            while t not in modules and "." in t:
                t = t.rpartition(".")[0]
            if t in modules and t != name:
                found.add(t)
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    return out


def test_no_import_circle():
    assert _cycles(_graph()) == []


def test_the_core_never_imports_the_cli():
    bad = {
        m: sorted(t for t in deps if t == "boomerang_cli.cli" or t.startswith("boomerang_cli.cli."))
        for m, deps in _graph().items()
        if not (m == "boomerang_cli.cli" or m.startswith("boomerang_cli.cli.")) and m not in ENTRY_POINTS
    }
    assert {m: d for m, d in bad.items() if d} == {}


def test_modules_stay_small():
    sizes = {name: len(path.read_text().splitlines()) for name, path in _modules().items()}
    assert {n: s for n, s in sizes.items() if s > MAX_LINES} == {}


def _body_lines(fn: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    body = fn.body
    doc = (
        isinstance(body[0], ast.Expr)
        and isinstance(body[0].value, ast.Constant)
        and isinstance(body[0].value.value, str)
    )
    first = body[1] if doc and len(body) > 1 else body[0]
    return (fn.end_lineno or first.lineno) - first.lineno + 1


def _is_command(fn: ast.FunctionDef | ast.AsyncFunctionDef) -> bool:
    return any(
        isinstance(d, ast.Call) and isinstance(d.func, ast.Attribute) and d.func.attr == "command"
        for d in fn.decorator_list
    )


def _long_functions() -> dict[str, int]:
    out = {}
    for name, path in _modules().items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                limit = MAX_COMMAND_LINES if _is_command(node) else MAX_FUNCTION_LINES
                if _body_lines(node) > limit:
                    out[f"{name}.{node.name}"] = _body_lines(node)
    return out


def test_functions_stay_short():
    """No function body over 80 lines, no command body over 40 (docstrings not counted)."""
    assert _long_functions() == {}


def test_the_length_check_counts_bodies():
    src = '@app.command("x")\ndef f():\n    """Doc."""\n    a = 1\n\n    return a\n'
    fn = ast.parse(src).body[0]
    assert isinstance(fn, ast.FunctionDef) and _body_lines(fn) == 3 and _is_command(fn)


def test_the_graph_sees_imports_inside_functions(tmp_path):
    """The checker itself: a circle through a function-level import is found."""
    graph = {"a": {"b"}, "b": {"a"}, "c": {"a"}}
    assert _cycles(graph) == [["a", "b"]]
    modules = _modules()
    deps = _imports("boomerang_cli.cli.family", modules["boomerang_cli.cli.family"], modules)
    assert "boomerang_cli.family" in deps  # imported inside the command function


#: Help, version and a flag error must not pay for these (seconds of imports).
HEAVY = ("torch", "transformers", "accelerate")
_PROBE = """
import json, sys
from boomerang_cli.cli import app
try:
    app(sys.argv[1:], prog_name="boomerang")
except SystemExit as exc:
    code = exc.code
print(json.dumps([code, sorted(m for m in {heavy!r} if m in sys.modules)]), file=sys.stderr)
"""


def test_help_version_and_flag_errors_import_no_torch():
    import json
    import os
    import subprocess
    import sys

    env = {**os.environ, "PYTHONPATH": str(PACKAGE.parent)}
    commands = ["distill", "eval", "family", "init-student", "export", "demo"]
    cases = [["--help"], ["--version"], ["distill", "--steps", "many"], ["family", "--no-such-flag"]]
    cases += [[c, "--help"] for c in commands]
    for argv in cases:
        run = subprocess.run(
            [sys.executable, "-c", _PROBE.format(heavy=HEAVY), *argv],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        code, heavy = json.loads(run.stderr.strip().splitlines()[-1])
        assert (code, heavy) == (2 if argv[-1] in ("many", "--no-such-flag") else 0, []), argv


def test_demo_has_no_pipeline_steps_of_its_own():
    """The demo calls the commands' entry points; the family's steps live in family.run.make_family only."""
    steps = {
        "open_pair",
        "build_family",
        "write_family",
        "calibrated_search",
        "select",
        "candidates",
        "achievable",
        "order_candidates",
        "calibration_for",
        "check_output",
    }
    for name in ("boomerang_cli.demo", "boomerang_cli.cli.demo", "boomerang_cli.cli.family"):
        tree = ast.parse(_modules()[name].read_text())
        used = {a.name for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) for a in n.names}
        used |= {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)}
        assert used & steps == set(), name
    run = ast.parse(_modules()["boomerang_cli.family.run"].read_text())
    assert {"open_pair", "calibrated_search", "select", "write_family"} <= {
        n.id for n in ast.walk(run) if isinstance(n, ast.Name)
    }
