"""The package's imports go one way: down the layers below, never up, with no cycle at all
(function-level imports included), and the producers (export, runtime, firmware_sim) do not
import one another."""
import ast
from pathlib import Path

import otterlite

PACKAGE = Path(otterlite.__file__).parent
LAYERS = [  # bottom first; a module's layer is that of its longest listed prefix
    ["otterlite", "otterlite.errors", "otterlite.files", "otterlite.debian", "otterlite.images",
     "otterlite.latent_coder", "otterlite.container", "otterlite.tflite_runtime_worker"],
    ["otterlite.models"],
    ["otterlite.integer_spec"],
    ["otterlite.export", "otterlite.runtime", "otterlite.firmware_sim", "otterlite.arm_env",
     "otterlite.tflite_runtime_env"],
    ["otterlite.backends"],
    ["otterlite.divergence", "otterlite.verify", "otterlite.bench", "otterlite.firmware_report", "otterlite.reports"],
    ["otterlite.workflow", "otterlite.firmware", "otterlite.batch", "otterlite.demo", "otterlite.info",
     "otterlite.arm_worker"],
    ["otterlite.cli", "otterlite.__main__"],
]
PRODUCERS = {"otterlite.export", "otterlite.runtime", "otterlite.firmware_sim"}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> set[str]:
    """Every otterlite module `path` imports, wherever the import statement sits."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found |= {f"{node.module}.{a.name}" for a in node.names} | {node.module}
    modules = {module_name(p) for p in PACKAGE.rglob("*.py")}
    return {name if name in modules else name.rsplit(".", 1)[0] for name in found
            if name.startswith("otterlite") and (name in modules or name.rsplit(".", 1)[0] in modules)}


def graph() -> dict[str, set[str]]:
    return {module_name(p): imports(p) - {module_name(p)} for p in sorted(PACKAGE.rglob("*.py"))}


def layer(module: str) -> int | None:
    """The layer of the longest listed name that is `module` or a package holding it."""
    matches = [(len(n), i) for i, names in enumerate(LAYERS) for n in names
               if module == n or module.startswith(n + ".")]
    return max(matches)[1] if matches else None


def test_every_module_has_a_layer():
    unplaced = [m for m in graph() if layer(m) is None]
    assert not unplaced, f"add these modules to LAYERS: {unplaced}"


def test_imports_only_go_down():
    upward = [f"{m} (layer {layer(m)}) imports {t} (layer {layer(t)})" for m, targets in graph().items()
              for t in targets if layer(t) > layer(m) and t != "otterlite"]
    assert not upward, "\n".join(upward)


def test_producers_do_not_import_each_other():
    def producer(m):
        return next((p for p in PRODUCERS if m == p or m.startswith(p + ".")), None)
    lateral = [f"{m} imports {t}" for m, targets in graph().items() for t in targets
               if producer(m) and producer(t) and producer(m) != producer(t)]
    assert not lateral, "\n".join(lateral)


def test_no_import_cycles():
    edges = graph()
    state, cycles = {}, []

    def visit(m, path):
        state[m] = "open"
        for t in sorted(edges.get(m, ())):
            if state.get(t) == "open":
                cycles.append(" -> ".join(path[path.index(t):] + [t]))
            elif t not in state:
                visit(t, path + [t])
        state[m] = "done"
    for m in edges:
        if m not in state:
            visit(m, [m])
    assert not cycles, "\n".join(cycles)
