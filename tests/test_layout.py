"""The package's architecture, checked: layers import downwards only, no import circles, no long module without
a reason, and every command the README names exists."""

import ast
import importlib.util
import re
from pathlib import Path

import pytest

from conftest import REPO

PACKAGE = REPO / "usad"
# A module may import from its own layer and the layers before it in this list; the command modules
# (usad/<command>.py, usad/__init__.py, usad/__main__.py) sit on top and may import anything.
LAYERS = ("core", "models", "belt", "experiments")
LONG_MODULE_LINES = 420      # "no module over about 400 lines without a reason in its docstring"
LONG_REASON = "Why one module"  # the docstring phrase that gives the reason


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def usad_imports(path: Path) -> set[str]:
    """Every ``usad...`` module this file imports, at the top or inside a function (a lazy import still makes
    a circle), resolved to module names (``from usad.core import metrics`` -> ``usad.core.metrics``)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0 and node.module.split(".")[0] == "usad":
            for alias in node.names:
                full = f"{node.module}.{alias.name}"
                out.add(full if (PACKAGE.parent / (full.replace(".", "/") + ".py")).is_file()
                        or (PACKAGE.parent / full.replace(".", "/")).is_dir() else node.module)
        elif isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.split(".")[0] == "usad"}
        elif isinstance(node, ast.ImportFrom) and node.level > 0:
            out.add(f"<relative import in {path.relative_to(REPO)}>")
    return out


def graph() -> dict[str, set[str]]:
    return {module_name(p): usad_imports(p) for p in sorted(PACKAGE.rglob("*.py"))}


def layer(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 2 or (len(parts) == 2 and parts[1] in LAYERS) else None


def test_imports_are_absolute():
    relative = sorted(m for deps in graph().values() for m in deps if m.startswith("<relative"))
    assert not relative, relative


def test_no_import_circles():
    g = graph()
    # drop edges to packages' __init__ when the module itself is the target's parent chain (importing
    # usad.core.data.dataset runs usad.core.data.__init__ and usad.core.__init__, which import nothing)
    circles, state = [], {}

    def visit(node, stack):
        state[node] = "open"
        for dep in sorted(g.get(node, ())):
            if dep not in g:
                continue
            if state.get(dep) == "open":
                circles.append(stack[stack.index(dep):] + [dep])
            elif dep not in state:
                visit(dep, stack + [dep])
        state[node] = "done"

    for node in g:
        if node not in state:
            visit(node, [node])
    assert not circles, "import circles:\n" + "\n".join(" -> ".join(c) for c in circles)


def test_layers_import_downwards_only():
    wrong = []
    for module, deps in graph().items():
        own = layer(module)
        if own is None:
            continue
        for dep in deps:
            dep_layer = layer(dep)
            if dep_layer is None:
                if dep != "usad.core.errors":   # e.g. `from usad import Detector` inside a layer
                    wrong.append(f"{module} imports the top-level {dep}")
            elif LAYERS.index(dep_layer) > LAYERS.index(own):
                wrong.append(f"{module} ({own}) imports {dep} ({dep_layer})")
    assert not wrong, "\n".join(wrong)


def test_long_modules_say_why():
    long = []
    for path in sorted(PACKAGE.rglob("*.py")):
        lines = path.read_text().count("\n")
        if lines > LONG_MODULE_LINES:
            doc = ast.get_docstring(ast.parse(path.read_text())) or ""
            if LONG_REASON not in doc:
                long.append(f"{path.relative_to(REPO)}: {lines} lines, no '{LONG_REASON} ...' reason in its docstring")
    assert not long, "\n".join(long)


def readme_commands() -> set[str]:
    return set(re.findall(r"python -m (usad(?:\.[a-z_]+)*)", (REPO / "README.md").read_text()))


def test_readme_names_commands():
    assert {"usad.run", "usad.reproduce", "usad.predict"} <= readme_commands()


@pytest.mark.parametrize("command", sorted(readme_commands()))
def test_every_readme_command_exists(command):
    assert importlib.util.find_spec(command) is not None, f"the README names python -m {command}, which does not exist"


@pytest.mark.parametrize("script", sorted(set(re.findall(r"python ((?:[\w/]+/)?[\w]+\.py)", (REPO / "README.md").read_text()))))
def test_every_readme_script_exists(script):
    assert (REPO / script).is_file(), f"the README names python {script}, which does not exist"
