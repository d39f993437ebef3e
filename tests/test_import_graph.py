"""The package's import graph: no module imports itself back through others, and what the
command line sees registered is what importing every module registers (the built-ins are
loaded in one place, ``nfgen.flows.builtins``, not by whichever test happens to import them)."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import nfgen

PACKAGE = Path(nfgen.__file__).parent


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _type_checking(node: ast.stmt) -> bool:
    test = getattr(node, "test", None)
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(test)


def _top_level_imports(tree: ast.Module) -> list[ast.Import | ast.ImportFrom]:
    """Imports that run when the module is imported: its top-level statements, and those inside
    top-level ``try``/``if`` blocks (not ``if TYPE_CHECKING:``, nor function or class bodies)."""
    found, todo = [], list(tree.body)
    while todo:
        node = todo.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            found.append(node)
        elif isinstance(node, (ast.If, ast.Try)) and not _type_checking(node):
            for field in ("body", "orelse", "finalbody"):
                todo += getattr(node, field, [])
            todo += [s for h in getattr(node, "handlers", []) for s in h.body]
    return found


def import_graph(root: Path) -> dict[str, set[str]]:
    """Module -> the package's modules it imports at import time, read from the source with ast.
    Importing ``a.b.c`` runs ``a`` and ``a.b`` first, so those are edges too."""
    top = root.name
    files = {module_name(p, root): p for p in root.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        targets: set[str] = set()
        for node in _top_level_imports(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets |= {a.name for a in node.names}
                continue
            base = node.module or ""
            if node.level:  # relative: from .x import y
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            targets.add(base)
            targets |= {f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in files}
        edges = set()
        for target in targets:
            parts = target.split(".")
            edges |= {".".join(parts[:i]) for i in range(1, len(parts) + 1)}  # the module and its packages
        graph[name] = {t for t in edges if t in files and t != name and (t == top or t.startswith(top + "."))}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle (``[a, b, ..., a]``), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start)):
            return cycle
    return None


def test_nfgen_has_no_import_cycle():
    graph = import_graph(PACKAGE)
    assert "nfgen.flows.transforms" in graph["nfgen.flows.spline"]  # the graph is read, not empty
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph) or [])


def test_the_cycle_finder_sees_a_registration_at_the_bottom(tmp_path):
    """What this test guards against: a registry module importing its built-ins at the bottom."""
    pkg = tmp_path / "pkg"
    (pkg / "flows").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "flows" / "__init__.py").write_text("")
    (pkg / "flows" / "registry.py").write_text("from typing import TYPE_CHECKING\nTABLE = {}\n"
                                               "if TYPE_CHECKING:\n    from pkg.flows import spline\n")
    (pkg / "flows" / "spline.py").write_text("def f():\n    from pkg.flows import registry\n"
                                             "from .registry import TABLE\n")
    assert find_cycle(import_graph(pkg)) is None  # function bodies and TYPE_CHECKING do not run on import
    (pkg / "flows" / "registry.py").write_text("TABLE = {}\ntry:\n    from pkg.flows import spline  # noqa\n"
                                               "except ImportError:\n    pass\n")
    assert find_cycle(import_graph(pkg)) == ["pkg.flows.registry", "pkg.flows.spline", "pkg.flows.registry"]


# Each registry a plugin can add to, as "module:attribute" (the architectures' and data sets' join here).
REGISTRIES = {"coupling transform": "nfgen.flows.transforms:TRANSFORMS", "conditioner": "nfgen.flows.nets:CONDITIONERS"}
REGISTRIES["data set"] = "nfgen.datasets.registry:DATASETS"

_NAMES = """
import importlib, json, pkgutil, sys
import nfgen.cli.app, nfgen.model.image_flow
if sys.argv[1] == "all":
    for m in pkgutil.walk_packages(nfgen.__path__, "nfgen."):
        if not m.name.endswith("__main__"):
            importlib.import_module(m.name)
out = {}
for what, where in json.loads(sys.argv[2]).items():
    module, attr = where.split(":")
    out[what] = sorted(getattr(importlib.import_module(module), attr))
print(json.dumps(out))
"""


def test_the_command_line_sees_every_registration():
    def names(mode: str) -> dict[str, list[str]]:
        done = subprocess.run([sys.executable, "-c", _NAMES, mode, json.dumps(REGISTRIES)], capture_output=True,
                              text=True, timeout=300)
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)

    seen = names("cli")
    assert {"affine", "additive", "spline", "logistic_mixture"} <= set(seen["coupling transform"])
    assert {"glow", "resnet", "attention", "mlp"} <= set(seen["conditioner"])
    assert {"mnist", "fashion_mnist", "cifar100", "imagenet64", "celeba", "folder"} <= set(seen["data set"])
    assert seen == names("all")


# The layers, lowest first: a module may import (at import time or inside a function; not under
# TYPE_CHECKING) only from its own layer or those below, so no arrow runs back up. The longest
# prefix names a module's layer. The package's root (``nfgen/__init__.py``) is its top, lazily
# importing the public names; below it, a module may take only ``from nfgen import __version__``.
LAYERS = [
    ["nfgen.errors"],                                                      # what a user can get wrong
    ["nfgen.core"],                                                        # files, devices, costs, registries
    ["nfgen.config.keys", "nfgen.config.parse", "nfgen.config.plugins"],   # schema-free config machinery
    ["nfgen.flows", "nfgen.datasets"],                                     # layers and architectures; data sets
    ["nfgen.config"],                                                      # the schema: reads both registries
    ["nfgen.model"],                                                       # ImageFlow, dequantizers
    ["nfgen.tasks"],                                                       # what is done with a model
    ["nfgen.training"],                                                    # runs, checkpoints, exports
    ["nfgen.density2d"],                                                   # the 2-D verb's own stack
    ["nfgen.cli", "nfgen.api", "nfgen.__main__", "nfgen"],                 # the entry points
]


def layer_of(module: str) -> tuple[int, str]:
    found = [(len(p), i, p) for i, names in enumerate(LAYERS) for p in names
             if module == p or module.startswith(p + ".")]
    assert found, f"{module} is in no layer: add its package to LAYERS"
    _, i, prefix = max(found)
    return i, prefix


def every_import(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every import of nfgen in ``path``, function bodies included, not under
    ``if TYPE_CHECKING:`` (annotations only) and not ``from nfgen import __version__``."""
    tree = ast.parse(path.read_text(), str(path))
    hidden = {id(n) for node in ast.walk(tree) if _type_checking(node) for n in ast.walk(node)}
    found = []
    for node in ast.walk(tree):
        if id(node) in hidden:
            continue
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.split(".")[0] == "nfgen"]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "nfgen" and not node.level:
            if node.module == "nfgen" and [a.name for a in node.names] == ["__version__"]:
                continue
            modules = {f"{node.module}.{a.name}" for a in node.names
                       if (PACKAGE.parent / f"{node.module}.{a.name}".replace(".", "/")).exists()
                       or (PACKAGE.parent / f"{node.module}.{a.name}".replace(".", "/")).with_suffix(".py").exists()}
            found += [(node.lineno, m) for m in sorted(modules) or [node.module]]
    return found


def test_no_import_runs_back_up_the_layers():
    arrows = []
    for path in sorted(PACKAGE.rglob("*.py")):
        name = module_name(path, PACKAGE)
        mine, _ = layer_of(name)
        for line, target in every_import(path):
            theirs, prefix = layer_of(target)
            if theirs > mine:
                arrows.append(f"{path.relative_to(PACKAGE.parent)}:{line} imports {target} ({prefix} is above)")
    assert not arrows, "\n".join(arrows)
    assert layer_of("nfgen.config.schema") > layer_of("nfgen.flows.glow_section") > layer_of("nfgen.config.keys")


def test_the_layer_check_sees_a_function_level_import(tmp_path):
    (tmp_path / "m.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                                   "    from nfgen.cli.app import app\n"
                                   "def f():\n    from nfgen.training.run import train\n"
                                   "from nfgen import __version__\n")
    assert every_import(tmp_path / "m.py") == [(5, "nfgen.training.run")]
