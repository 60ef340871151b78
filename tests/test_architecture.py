"""The package's layers (docs/architecture.md): imports only point down, and there are no import circles.

Every `import cnntrain...` statement counts, the ones inside functions too: a lazy
import that runs back up is still a circle waiting to happen.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "cnntrain"

# Lowest first. A module may import its own layer or lower ones.
LAYERS = [
    {"cnntrain", "cnntrain.errors", "cnntrain.registry", "cnntrain.process", "cnntrain.cpu"},
    {
        "cnntrain.config",
        "cnntrain.key_checks",
        "cnntrain.override_text",
        "cnntrain.recipes",
        "cnntrain.command_line",
        "cnntrain.companion_line",
        "cnntrain.user_code",
    },
    {
        "cnntrain.trainer",
        "cnntrain.data",
        "cnntrain.models",
        "cnntrain.optim",
        "cnntrain.speed_switches",
        "cnntrain.inspector",
        "cnntrain.run_folder",
        "cnntrain.hydra_folders",
        "cnntrain.plots",
        "cnntrain.checkpoint",
        "cnntrain.pretrained",
        "cnntrain.timm_weights",
        "cnntrain.distributed",
        "cnntrain.ema",
        "cnntrain.metrics",
        "cnntrain.hooks",
        "cnntrain.evaluator",
        "cnntrain.trainer_state",
        "cnntrain.trainer_steps",
        "cnntrain.safe_writes",
        "cnntrain.provenance",
        "cnntrain.companion_files",
        "cnntrain.settings",
        "cnntrain.time_plan",
        "cnntrain.time_fitting",
        "cnntrain.optuna_study",
        "cnntrain.checkpoint_policy",
        "cnntrain.class_balance",
    },
    {
        "cnntrain.callbacks",
        "cnntrain.display",
        "cnntrain.loggers",
        "cnntrain.finetune",
        "cnntrain.contention",
        "cnntrain.time_budget",
        "cnntrain.trial_pruning",
        "cnntrain.checkpointer",
    },
    {
        "cnntrain.checks",
        "cnntrain.setting_checks",
        "cnntrain.trainer_checks",
        "cnntrain.build",
        "cnntrain.model_setup",
        "cnntrain.run_callbacks",
        "cnntrain.opened_run",
    },
    {
        "cnntrain.run",
        "cnntrain.run_report",
        "cnntrain.interruptions",
        "cnntrain.resuming",
        "cnntrain.predict",
        "cnntrain.sweep",
        "cnntrain.sweep_jobs",
        "cnntrain.sweep_report",
        "cnntrain.optuna_search",
        "cnntrain.export",
        "cnntrain.evaluation",
        "cnntrain.eval_result",
        "cnntrain.eval_data",
        "cnntrain.eval_files",
        "cnntrain.eval_report",
        "cnntrain.predictor",
        "cnntrain.exported_model",
        "cnntrain.predict_output",
        "cnntrain.export_formats",
        "cnntrain.export_images",
        "cnntrain.export_json",
        "cnntrain.onnx_export",
    },
    {"cnntrain.api"},
    {"cnntrain.cli", "cnntrain.companion_commands", "cnntrain.__main__"},
]


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def all_modules() -> dict[str, Path]:
    return {module_name(p): p for p in PACKAGE.rglob("*.py")}


def imported_modules(path: Path, modules: dict[str, Path]) -> set[str]:
    """The cnntrain modules `path` imports (a `from package import submodule` counts as the submodule)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith("cnntrain")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("cnntrain"):
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                found.add(sub if sub in modules else node.module)
    return found


def layer_of(module: str) -> int:
    for rank, layer in enumerate(LAYERS):
        if any(module == top or module.startswith(top + ".") for top in layer if top != "cnntrain"):
            return rank
    assert module == "cnntrain", f"{module} is in no layer of tests/test_architecture.py"
    return 0


def import_graph() -> dict[str, set[str]]:
    """module -> cnntrain modules it imports. A package's registration imports of its own
    submodules (data/__init__ importing data.cifar so its builders register) are left out:
    they run after the package is complete."""
    modules = all_modules()
    graph = {}
    for name, path in modules.items():
        targets = imported_modules(path, modules) - {name}
        if path.name == "__init__.py":
            targets = {t for t in targets if not t.startswith(name + ".")}
        graph[name] = targets
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, str] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = "open"
        stack.append(node)
        for target in sorted(graph.get(node, ())):
            if state.get(target) == "open":
                return stack[stack.index(target) :] + [target]
            if target not in state:
                cycle = visit(target)
                if cycle:
                    return cycle
        stack.pop()
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


def test_there_are_no_import_circles():
    assert find_cycle(import_graph()) is None


def test_the_cycle_finder_finds_a_circle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_imports_only_point_down():
    upward = [
        f"{module} (layer {layer_of(module)}) imports {target} (layer {layer_of(target)})"
        for module, targets in import_graph().items()
        for target in targets
        if layer_of(target) > layer_of(module)
    ]
    assert upward == []


def test_a_packages_modules_do_not_import_its_init():
    """models/*.py and data/*.py take MODELS and DATASETS from models/catalog.py and data/catalog.py: an
    import of the package's __init__ from inside it runs while that __init__ is half done."""
    modules = all_modules()
    inward = [
        f"{name} imports {target}"
        for name, path in modules.items()
        if path.name != "__init__.py"
        for target in imported_modules(path, modules)
        if target != "cnntrain" and modules.get(target, Path()).name == "__init__.py" and name.startswith(target + ".")
    ]  # cnntrain/__init__.py holds only the version
    assert inward == []


def test_every_module_has_a_layer_and_a_docstring():
    for name, path in all_modules().items():
        layer_of(name)
        if path.stat().st_size:
            assert ast.get_docstring(ast.parse(path.read_text())), f"{name} has no module docstring"


def test_the_cli_and_config_modules_do_not_import_torch():
    code = "import sys, cnntrain.cli, cnntrain.config; print(sorted(m for m in sys.modules if m.startswith('torch')))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
