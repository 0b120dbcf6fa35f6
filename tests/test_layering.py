"""The house rules, read statically (ast) from every module's imports, lazy ones included:
no import cycle; the shared core (train.core) imports nothing else of the project; train/
imports only the core; validate/ imports the core and train.data only, never a framework;
convert/ may import everything; a command-line module is never imported as a library."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("convert", "train", "validate")
FRAMEWORKS = ("torch", "torchvision", "tensorflow", "keras", "tf2onnx", "tf_keras", "onnx2tf",
              "onnx2torch")
CORE = "train.core"


def module_name(path: Path, root: Path) -> str:
    """`validate/report/text.py` -> `validate.report.text`; a package's __init__ -> the package."""
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _absolute(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".")
    base = base[:len(base) - node.level + (1 if is_package else 0)]
    return ".".join(base + ([node.module] if node.module else []))


def read_imports(root: Path) -> tuple[dict[str, set[str]], dict[str, set[str]], set[str]]:
    """Per module: the project modules it imports (a name imported from a package counts as its
    submodule when there is one), the outside top-level packages it imports, and which modules
    are command lines (they hold `if __name__ == "__main__"`)."""
    paths = {module_name(p, root): p for pkg in PACKAGES for p in (root / pkg).rglob("*.py")}
    project, outside, commands = {}, {}, set()
    for name, path in paths.items():
        tree = ast.parse(path.read_text(), str(path))
        deps, ext = set(), set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = _absolute(name, path.name == "__init__.py", node)
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in paths else base
                           for a in node.names]
            elif (isinstance(node, ast.Compare) and isinstance(node.left, ast.Name)
                  and node.left.id == "__name__"
                  and any(isinstance(c, ast.Constant) and c.value == "__main__"
                          for c in node.comparators)):
                commands.add(name)
                continue
            else:
                continue
            for target in targets:
                if target.split(".")[0] in PACKAGES:
                    while target and target not in paths:  # `import a.b.name` -> a.b
                        target = target.rpartition(".")[0]
                    if target and target != name:
                        deps.add(target)
                else:
                    ext.add(target.split(".")[0])
        project[name], outside[name] = deps, ext
    return project, outside, commands


def _with_parents(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    """Importing a.b.c runs a/__init__ and a/b/__init__ first: those are edges too."""
    full = {}
    for name, deps in graph.items():
        edges = set(deps)
        for dep in deps:
            parts = dep.split(".")
            edges.update(".".join(parts[:i]) for i in range(1, len(parts)))
        full[name] = {d for d in edges if d in graph and d != name
                      and not name.startswith(d + ".")}
    return full


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), each sorted."""
    graph = _with_parents(graph)
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def layer(module: str) -> str:
    if module == CORE or module.startswith(CORE + "."):
        return "core"
    return module.split(".")[0]


def allowed(src: str, dst: str) -> bool:
    """The direction rule for one project import."""
    a, b = layer(src), layer(dst)
    if a == "core":
        return b == "core"
    if a == "train":
        return b in ("core", "train")
    if a == "validate":
        return b in ("core", "validate") or dst in ("train", "train.data")
    return True  # convert may import everything


def violations(root: Path) -> list[str]:
    """Every broken rule under ROOT, one line each."""
    project, outside, commands = read_imports(root)
    lines = [f"import cycle: {' <-> '.join(c)}" for c in cycles(project)]
    for src, deps in sorted(project.items()):
        for dst in sorted(deps):
            if not allowed(src, dst):
                lines.append(f"{src} imports {dst} ({layer(src)} may not import {layer(dst)})")
            if dst in commands or dst.endswith(".__main__"):
                lines.append(f"{src} imports {dst}, a command-line module")
        banned = outside[src] & set(FRAMEWORKS)
        if layer(src) in ("core", "validate") and banned:
            lines.append(f"{src} imports {', '.join(sorted(banned))} (framework-free layer)")
    return lines



def test_the_house_keeps_its_rules():
    assert violations(ROOT) == []


def test_core_and_layers_are_what_the_readme_says():
    project, _, _ = read_imports(ROOT)
    assert any(layer(m) == "core" for m in project) and len(project) > 40
    # the shared core is imported by all three packages
    users = {layer(src) for src, deps in project.items() for d in deps if layer(d) == "core"}
    assert {"train", "validate", "convert"} <= users


def _tree(tmp_path: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    for pkg in PACKAGES:
        (tmp_path / pkg).mkdir(exist_ok=True)
        (tmp_path / pkg / "__init__.py").touch()
    return tmp_path


def test_a_planted_cycle_is_found(tmp_path):
    root = _tree(tmp_path, {
        "validate/a.py": "from validate import b\n",
        "validate/b.py": "def f():\n    from validate.a import x  # lazy, still a cycle\n",
    })
    assert violations(root) == ["import cycle: validate.a <-> validate.b"]


def test_a_cycle_through_a_package_init_is_found(tmp_path):
    root = _tree(tmp_path, {
        "validate/report/__init__.py": "from validate.report.markdown import write\n",
        "validate/report/markdown.py": "from validate.compare import parity\n",
        "validate/report/text.py": "",
        "validate/compare/__init__.py": "",
        "validate/compare/parity.py": "from validate.report.text import cell\n",
    })
    assert len(violations(root)) == 1 and "import cycle" in violations(root)[0]


@pytest.mark.parametrize("src, text, expected", [
    ("train/core/errors.py", "from train import data\n", "core may not import train"),
    ("train/data.py", "from validate import parity\n", "train may not import validate"),
    ("validate/parity.py", "import convert.cli\n", "validate may not import convert"),
    ("validate/parity.py", "from train import recipe\n", "validate may not import train"),
    ("validate/parity.py", "import torch\n", "imports torch (framework-free layer)"),
    ("convert/cli.py", "from validate.__main__ import main\n", "a command-line module"),
    ("convert/cli.py", "from validate import tool\n", "a command-line module"),
])
def test_a_planted_forbidden_import_is_named(tmp_path, src, text, expected):
    root = _tree(tmp_path, {
        "train/recipe.py": "", "train/data.py": "", "train/core/__init__.py": "",
        "train/core/errors.py": "", "validate/parity.py": "", "convert/cli.py": "",
        "validate/__main__.py": "", "validate/tool.py": "if __name__ == '__main__':\n    pass\n",
    })
    (root / src).write_text(text)
    found = violations(root)
    assert len(found) == 1 and expected in found[0], found
