"""The house rules of the layout, read from the source: no import cycles, no forbidden arrows.

Every ``import`` in every module of ``mxlab`` counts (top level or inside a function), except those
under ``if TYPE_CHECKING:`` (types only, never executed). See docs/DESIGN.md for why each rule exists.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "mxlab"
MAX_LINES = 420          # "about 400": a file should read in one sitting


def _module_name(path: Path) -> str:
    parts = ("mxlab", *path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_type_checking(node: ast.If) -> bool:
    t = node.test
    return (isinstance(t, ast.Name) and t.id == "TYPE_CHECKING") or \
        (isinstance(t, ast.Attribute) and t.attr == "TYPE_CHECKING")


def _imports(path: Path) -> set[str]:
    """Project modules imported by ``path`` (resolved to the deepest module that exists)."""
    me = _module_name(path)
    package = me if path.name == "__init__.py" else me.rpartition(".")[0]
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("mxlab"))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            if mod.startswith("mxlab"):
                for a in node.names:      # "from . import tables" names a module
                    found.add(f"{mod}.{a.name}" if _exists(f"{mod}.{a.name}") else mod)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    found.discard(me)
    return {_deepest(m) for m in found}


def _exists(mod: str) -> bool:
    rel = Path(*mod.split(".")[1:])
    return (ROOT / rel).with_suffix(".py").is_file() or (ROOT / rel / "__init__.py").is_file()


def _deepest(mod: str) -> str:
    while not _exists(mod) and "." in mod:
        mod = mod.rpartition(".")[0]
    return mod


GRAPH = {_module_name(p): _imports(p) for p in sorted(ROOT.rglob("*.py"))}


def _under(mod: str, *prefixes: str) -> bool:
    return any(mod == p or mod.startswith(p + ".") for p in prefixes)


# (who, may not import, why)
FORBIDDEN = [
    (("mxlab.formats",), lambda m: not _under(m, "mxlab.formats", "mxlab.errors"),
     "the numerics stand alone: formats imports nothing of the project but errors"),
    (("mxlab.ptq",), lambda m: _under(m, "mxlab.tables", "mxlab.plots", "mxlab.report", "mxlab.rundir", "mxlab.lab",
                                      "mxlab.cli", "mxlab.runner", "mxlab.sensitivity"),
     "the quantization loop imports no analysis module and no front end"),
    (("mxlab.tables", "mxlab.plots", "mxlab.report"), lambda m: _under(m, "mxlab.ptq", "mxlab.models"),
     "analysis reads tables and records, never a model"),
    (("mxlab.lab",), lambda m: _under(m, "mxlab.architectures"),
     "the app asks the plan what is quantized instead of reading architecture tables"),
    (("mxlab.checkpoint",), lambda m: _under(m, "mxlab.report", "mxlab.tables", "mxlab.plots", "mxlab.rundir",
                                             "mxlab.runner"),
     "a checkpoint is weights and formats; the run directory builds on it, not the reverse"),
]
LIBRARY = [m for m in GRAPH if not _under(m, "mxlab.cli", "mxlab.__main__")]


@pytest.mark.parametrize("who,bad,why", FORBIDDEN, ids=[f[0][0] for f in FORBIDDEN])
def test_no_forbidden_arrow(who, bad, why):
    arrows = [f"{m} -> {t}" for m in GRAPH if _under(m, *who) for t in GRAPH[m] if bad(t)]
    assert arrows == [], f"{why}: {arrows}"


def test_the_library_never_imports_a_front_end():
    arrows = [f"{m} -> {t}" for m in LIBRARY for t in GRAPH[m] if _under(t, "mxlab.cli", "mxlab.lab")
              and not _under(m, "mxlab.lab")]
    assert arrows == []


def test_no_import_cycle():
    state: dict[str, int] = {}           # 1: on the current path, 2: done
    stack: list[str] = []
    cycles: list[list[str]] = []

    def dfs(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for t in sorted(GRAPH.get(m, ())):
            if state.get(t) == 1:
                cycles.append(stack[stack.index(t):] + [t])
            elif t in GRAPH and not state.get(t):
                dfs(t)
        stack.pop()
        state[m] = 2

    for m in sorted(GRAPH):
        if not state.get(m):
            dfs(m)
    assert cycles == [], " ; ".join(" -> ".join(c) for c in cycles)


def test_the_checker_sees_real_arrows():
    """The graph is not empty by accident: known arrows are found, TYPE_CHECKING ones are not."""
    assert "mxlab.ptq.plan" in GRAPH["mxlab.ptq.pipeline"]
    assert "mxlab.errors" in GRAPH["mxlab.formats.table"]
    assert "mxlab.tables" in GRAPH["mxlab.report"]
    assert "mxlab.runner" not in GRAPH["mxlab.rundir"]          # typed through TYPE_CHECKING only


def test_files_read_in_one_sitting():
    long = {str(p.relative_to(ROOT.parent)): n for p in ROOT.rglob("*.py")
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_LINES}
    assert long == {}


# modules that import an optional heavy package (plotly, yaml, triton) when imported: a function-local
# import of them keeps `import mxlab` and the GPU machine (no plotly) working
HEAVY = {"mxlab.plots", "mxlab.report", "mxlab.mix.figures", "mxlab.safe_yaml", "mxlab.formats.kernels",
         "mxlab.ptq.methods.gptq_kernel", "mxlab.compare"}


def _local_project_imports(path: Path) -> list[str]:
    """Project imports inside functions (not under TYPE_CHECKING), as 'line: module'."""
    me = _module_name(path)
    package = me if path.name == "__init__.py" else me.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        for sub in ast.walk(node):
            if isinstance(sub, ast.ImportFrom) and sub.level:
                base = package.split(".")
                base = base[: len(base) - (sub.level - 1)]
                mod = ".".join(base + ([sub.module] if sub.module else []))
                targets = [f"{mod}.{a.name}" if _exists(f"{mod}.{a.name}") else mod for a in sub.names]
                if not all(_deepest(t) in HEAVY for t in targets):
                    found.append(f"{sub.lineno}: {mod}")
    return found


def test_project_imports_sit_at_the_top():
    """House rule: function-local imports only for optional heavy packages (and modules that pull them)."""
    local = {str(p.relative_to(ROOT.parent)): found for p in sorted(ROOT.rglob("*.py"))
             if (found := _local_project_imports(p))}
    assert local == {}
