"""The project's packages form layers that only point down.

Every module of every package is parsed (not imported): module-level imports, imports inside
functions, relative imports and `importlib.import_module("...")` string literals all count.
"""

import ast
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

LAYERS = ["trainkit", "stage1_tokenizer", "stage2_prior", "pipelines", "evalkit", "commands"]
RANK = {name: i for i, name in enumerate(LAYERS)}
RULE = "each layer may import only itself and the layers below it: " + " <- ".join(LAYERS)


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _resolve(module: str, is_package: bool, target: str | None, level: int) -> str:
    """The absolute name of `from <level dots><target> import ...` written in `module`."""
    if level == 0:
        return target or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - (level - 1)] if level > 1 else base
    return ".".join([*base, *([target] if target else [])])


def imports_of(path: Path) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import in the file."""
    module, is_package = _module_name(path), path.name == "__init__.py"
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            found.append((node.lineno, _resolve(module, is_package, node.module, node.level)))
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant) \
                and isinstance(node.args[0].value, str):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
            if name in ("import_module", "__import__"):
                found.append((node.lineno, node.args[0].value))
    return found


def package_edges() -> list[tuple[str, str, str, int, str]]:
    """(importing package, imported package, file, line, import) for every import between project packages."""
    edges = []
    for package in LAYERS:
        for path in sorted((REPO / package).rglob("*.py")):
            for line, name in imports_of(path):
                target = name.split(".")[0]
                if target in RANK:
                    edges.append((package, target, str(path.relative_to(REPO)), line, name))
    return edges


def test_every_layer_exists():
    for package in LAYERS:
        assert (REPO / package / "__init__.py").is_file(), f"{package}/ is not a package"


def test_imports_only_point_down():
    upward = [f"{file}:{line}: {package} imports {name} ({target} is above {package}; {RULE})"
              for package, target, file, line, name in package_edges() if RANK[target] > RANK[package]]
    assert not upward, "imports that point up a layer:\n" + "\n".join(upward)


def test_no_cycles_between_packages():
    graph: dict[str, set[str]] = {p: set() for p in LAYERS}
    for package, target, *_ in package_edges():
        if package != target:
            graph[package].add(target)

    def cycle_from(start: str, node: str, path: list[str]) -> list[str] | None:
        for nxt in sorted(graph[node]):
            if nxt == start:
                return [*path, nxt]
            if nxt not in path:
                found = cycle_from(start, nxt, [*path, nxt])
                if found:
                    return found
        return None

    cycles = [" -> ".join(c) for p in LAYERS if (c := cycle_from(p, p, [p]))]
    assert not cycles, f"import cycles between packages: {cycles}"


def test_the_parser_sees_nested_relative_and_dynamic_imports(tmp_path, monkeypatch):
    """The checker itself: a function-level import, `from .. import x` and import_module all count."""
    package = tmp_path / "pipelines" / "sub"
    package.mkdir(parents=True)
    (package / "mod.py").write_text(
        "import importlib\n"
        "def f():\n"
        "    from ...evalkit import metrics\n"
        "    from .. import card\n"
        "    return importlib.import_module('commands.main_job')\n")
    monkeypatch.setattr(sys.modules[__name__], "REPO", tmp_path)
    names = [name for _, name in imports_of(package / "mod.py")]
    assert names == ["importlib", "evalkit", "pipelines", "commands.main_job"]
