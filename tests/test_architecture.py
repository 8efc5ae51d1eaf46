"""The layout rules of docs/design.md ('Module map'), checked on the source: small files and functions, no import
cycle among DAO's modules (module-level imports, the ones that define the dependency graph), and a typed
public API (every public function and method annotates its parameters and its return type)."""
from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "dao"
MAX_FILE_LINES = 400
MAX_FUNCTION_LINES = 80


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(SRC.rglob("*.py")):
        parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _top_level_dao_imports(tree: ast.Module, module: str, is_package: bool) -> set[str]:
    """dao.* modules imported at module level (not inside functions, not under TYPE_CHECKING)."""
    found = set()
    for node in tree.body:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            continue
        for sub in ([node] if not isinstance(node, (ast.If, ast.Try)) else ast.walk(node)):
            if isinstance(sub, ast.Import):
                found |= {a.name for a in sub.names if a.name.startswith("dao")}
            elif isinstance(sub, ast.ImportFrom):
                if sub.level:
                    base = module.split(".") if is_package else module.split(".")[:-1]
                    base = base[: len(base) - sub.level + 1]
                    name = ".".join(base + ([sub.module] if sub.module else []))
                else:
                    name = sub.module or ""
                if name.startswith("dao"):
                    found.add(name)
                    found |= {f"{name}.{a.name}" for a in sub.names}
    return found


def test_files_and_functions_are_small():
    long_files = [f"{p.relative_to(SRC)}: {n}" for p in SRC.rglob("*.py")
                  if (n := len(p.read_text().splitlines())) > MAX_FILE_LINES]
    assert not long_files, f"files over {MAX_FILE_LINES} lines: {long_files}"
    long_functions = []
    for path in SRC.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > MAX_FUNCTION_LINES:
                    long_functions.append(f"{path.relative_to(SRC)}:{node.lineno} {node.name} ({n} lines)")
    assert not long_functions, f"functions over {MAX_FUNCTION_LINES} lines: {long_functions}"


def test_no_import_cycle_between_dao_modules():
    modules = _modules()
    graph = {}
    for name, path in modules.items():
        deps = _top_level_dao_imports(ast.parse(path.read_text()), name, path.name == "__init__.py")
        graph[name] = {d for d in deps if d in modules and d != name}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for dep in sorted(graph[node]):
            if state.get(dep) == 1:
                return stack[stack.index(dep):] + [dep]
            if dep not in state and (cycle := visit(dep)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for name in sorted(graph):
        if name not in state:
            cycle = visit(name)
            assert cycle is None, "import cycle: " + " → ".join(cycle)


def test_public_functions_are_typed():
    untyped = []
    for path in SRC.rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if not isinstance(node, ast.ClassDef) and node is not tree:
                continue
            for fn in node.body:
                if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)) or fn.name.startswith("_"):
                    continue
                args = [a for a in fn.args.posonlyargs + fn.args.args + fn.args.kwonlyargs
                        if a.arg not in ("self", "cls")]
                args += [a for a in (fn.args.vararg, fn.args.kwarg) if a is not None]
                if fn.returns is None or any(a.annotation is None for a in args):
                    untyped.append(f"{path.relative_to(SRC)}:{fn.lineno} {fn.name}")
    assert not untyped, f"public functions without full annotations: {untyped}"
