"""The house holds: no import cycle inside the medgpt package (lazy imports in functions count too), and no stage
script, tool, benchmark or test patches sys.path or hands a child process a PYTHONPATH (`pip install -e .` installs
the package, the stage scripts and tools/)."""

import ast
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "medgpt"


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def package_imports() -> dict[str, set[str]]:
    """module -> the package modules it imports anywhere in its file."""
    modules = {module_name(path): path for path in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets.add(node.module)
                targets |= {f"{node.module}.{alias.name}" for alias in node.names}
        # A package's __init__ re-exporting its modules is no cycle: importing a submodule runs it first anyway.
        graph[name] = {t for t in targets if t in modules and t != name and not name.startswith(t + ".")}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1 on the current path, 2 done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for target in sorted(graph[node]):
            if state.get(target) == 1:
                return path[path.index(target) :] + [target]
            if target not in state and (cycle := visit(target)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_no_import_cycles_in_the_package():
    graph = package_imports()
    assert "medgpt.chat.templates" in graph and "medgpt.rewards" in graph
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_the_cycle_finder_finds_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def _python_sources():
    """Every .py file outside tests and the venv, and the code cells of the notebooks, as (name, source)."""
    for path in ROOT.glob("**/*.py"):
        if not {".venv", "tests", "build", "outputs"} & set(path.relative_to(ROOT).parts):  # outputs: runs, peers
            yield str(path.relative_to(ROOT)), path.read_text(encoding="utf-8")
    for path in ROOT.glob("notebooks/*.ipynb"):
        cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
        for number, cell in enumerate(cells):
            if cell["cell_type"] == "code":
                yield f"{path.relative_to(ROOT)} cell {number}", "".join(cell["source"])


def test_nothing_patches_sys_path():
    offenders = []
    for name, source in _python_sources():
        tree = ast.parse(source)
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and node.attr in {"insert", "append", "extend"}:
                target = node.value
                if (
                    isinstance(target, ast.Attribute)
                    and target.attr == "path"
                    and getattr(target.value, "id", "") == "sys"
                ):
                    offenders.append(f"{name}:{node.lineno}")
    assert not offenders, offenders


def test_no_child_process_gets_a_pythonpath():
    offenders = []
    tests = [path for path in (ROOT / "tests").glob("*.py") if path != Path(__file__).resolve()]  # this file names it
    sources = [*_python_sources(), *((str(path.relative_to(ROOT)), path.read_text()) for path in tests)]
    for name, source in sources:
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.Constant) and node.value == "PYTHONPATH":
                offenders.append(f"{name}:{node.lineno}")
    assert not offenders, offenders


def test_the_install_makes_every_script_and_tool_importable():
    """`pip install .` installs every top-level script as a module and tools/ as a package, so nothing needs a
    sys.path entry: pytest adds none either."""
    import tomllib

    config = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    scripts = sorted(path.stem for path in ROOT.glob("*.py"))
    assert sorted(config["tool"]["setuptools"]["py-modules"]) == scripts, "add the new script to py-modules"
    assert "tools" in config["tool"]["setuptools"]["packages"]["find"]["include"]
    assert "pythonpath" not in config["tool"]["pytest"]["ini_options"]
