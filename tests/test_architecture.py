"""The import graph flows one way: array module -> Tensor -> functional -> nn -> models -> demo.

Every ``import`` in the package (at the top of a module or inside a
function) is read from the source. Each top-level part of the package may
import only the parts listed for it in ``MAY_IMPORT``, so nothing imports
upward: the engine never imports an op, ``functional`` never imports the
fast paths (their threads, workspaces or kernels) that replace its ops, and
the fast paths depend on ``functional``'s ops, never the reverse. And no
module imports itself back through a chain of others (no cycles).
"""
import ast
import os

import pytest

PACKAGE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tinygnet")

# part of the package -> the parts it may import (itself always allowed)
MAY_IMPORT = {
    "backend": set(),
    "dispatch": {"backend"},
    "conversion": {"backend"},
    "tensor": {"backend", "dispatch", "conversion"},
    "ops": {"backend", "tensor", "conversion"},
    "gradcheck": {"backend", "tensor"},
    "checkpoint": {"backend"},
    "data": {"backend", "checkpoint"},
    "functional": {"backend", "tensor"},
    "kernels": {"backend", "dispatch", "tensor", "functional"},
    "nn": {"backend", "tensor", "functional"},
    "optim": {"backend", "tensor", "nn"},
    "models": {"backend", "tensor", "functional", "nn"},
    "summary": {"backend", "tensor", "nn"},
    "diagnostics": {"backend", "tensor"},
    "demo": {"*"},            # the top: the demos may use everything
    "__init__": {"*"},        # ``import tinygnet`` puts the pieces together
}


def module_name(path):
    relative = os.path.relpath(path, os.path.dirname(PACKAGE))[:-len(".py")]
    parts = relative.split(os.sep)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def is_module(name):
    path = os.path.join(os.path.dirname(PACKAGE), *name.split("."))
    return os.path.isfile(path + ".py") or os.path.isfile(os.path.join(path, "__init__.py"))


def imports_of(path):
    """The tinygnet modules that the file at ``path`` imports, anywhere in it."""
    name = module_name(path)
    package = name if path.endswith("__init__.py") else name.rsplit(".", 1)[0]
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read(), path)
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith("tinygnet")}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            elif node.module and node.module.startswith("tinygnet"):
                target = node.module
            else:
                continue
            for alias in node.names:      # ``from . import backend`` imports a module
                candidate = f"{target}.{alias.name}"
                found.add(candidate if is_module(candidate) else target)
    return found


def graph():
    edges = {}
    for folder, _, files in os.walk(PACKAGE):
        for file in files:
            if file.endswith(".py"):
                path = os.path.join(folder, file)
                edges[module_name(path)] = imports_of(path)
    return edges


def part(module):
    """The top-level part of the package a module belongs to ("__init__" for the root)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


EDGES = graph()


def test_the_graph_was_read():
    assert "tinygnet.tensor" in EDGES and "tinygnet.backend" in EDGES["tinygnet.tensor"]
    assert "tinygnet.functional.conv" in EDGES["tinygnet.kernels.cpu_conv"]


def test_every_part_of_the_package_has_a_place_in_the_layers():
    parts = {part(module) for module in EDGES}
    assert not parts - set(MAY_IMPORT), "add the new part to MAY_IMPORT, in its layer"


@pytest.mark.parametrize("module", sorted(EDGES))
def test_no_module_imports_upward(module):
    allowed = MAY_IMPORT[part(module)] | {part(module)}
    if "*" in allowed:
        return
    upward = sorted(target for target in EDGES[module] if part(target) not in allowed)
    assert not upward, f"{module} may import only {sorted(allowed)}"


def test_functional_never_reaches_threads_workspaces_or_kernels():
    for module, targets in EDGES.items():
        if part(module) == "functional":
            assert not [t for t in targets if part(t) == "kernels"], module


def test_there_are_no_import_cycles():
    done, on_path, cycles = set(), [], []

    def visit(module):
        if module in on_path:
            cycles.append(on_path[on_path.index(module):] + [module])
            return
        if module in done:
            return
        on_path.append(module)
        for target in EDGES.get(module, ()):
            visit(target)
        on_path.pop()
        done.add(module)

    for module in sorted(EDGES):
        visit(module)
    assert not cycles, " -> ".join(cycles[0])
