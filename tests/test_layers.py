"""Imports only go down the layers: core -> data/inputs -> components and workflows -> pipelines -> cli.

Every ``import`` and ``from ... import`` in the package is checked, function-level ones included
(parsed with ``ast``, nothing is imported). A new module must be given a layer here.
"""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "epee_annotate"

CORE, INPUTS, COMPONENTS, PIPELINES, CLI = range(5)
LAYER_NAMES = ["core", "data/inputs", "components/workflows", "pipelines", "cli"]
# Top-level module or package of epee_annotate -> its layer.
LAYERS = {
    "": CORE,  # the package itself: __version__ and lazy exports
    **dict.fromkeys(["vocab", "policies", "prediction", "backbones", "heads", "engine",
                     "checkpoint", "model", "inputs", "image_decoding", "storage", "filesystem", "formats", "extras", "progress",
                     "metrics", "timing", "offline", "testing", "runtimes", "cores"], CORE),
    "data": INPUTS, "imaging": INPUTS,
    **dict.fromkeys(["components", "training", "evaluation", "calibration", "reports", "plots", "omop"], COMPONENTS),
    "pipelines": PIPELINES,
    "cli": CLI, "__main__": CLI,
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """(line, absolute module) of every import of an epee_annotate module in ``path``."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            # ``from . import storage`` imports the module epee_annotate.storage
            found += [(node.lineno, f"{target}.{alias.name}") for alias in node.names] if not node.module else []
            found.append((node.lineno, target))
    return [(line, module) for line, module in found if module.split(".")[0] == "epee_annotate"]


def layer_of(module: str) -> int | None:
    """Layer of an epee_annotate module (None: a name inside a module, e.g. ``__version__``)."""
    parts = module.split(".")[1:]
    top = parts[0] if parts else ""
    if top not in LAYERS:
        return None
    return LAYERS[top]


def upward_imports() -> list[str]:
    problems = []
    for path in sorted(PACKAGE.rglob("*.py")):
        source = module_name(path)
        source_layer = layer_of(source)
        assert source_layer is not None, f"{source} has no layer: add it to LAYERS in {__file__}"
        for line, target in imported_modules(path):
            target_layer = layer_of(target)
            if target_layer is not None and target_layer > source_layer:
                problems.append(f"{path.relative_to(PACKAGE.parent)}:{line}: {source} ({LAYER_NAMES[source_layer]}) "
                                f"imports {target} ({LAYER_NAMES[target_layer]})")
    return problems


def test_no_import_goes_up_a_layer():
    assert upward_imports() == []


def test_the_check_sees_function_level_and_relative_imports(tmp_path, monkeypatch):
    fake = tmp_path / "epee_annotate"
    (fake / "pipelines").mkdir(parents=True)
    (fake / "__init__.py").write_text("")
    (fake / "model.py").write_text("def f():\n    from .pipelines import jobs\n")
    (fake / "engine.py").write_text("from . import storage, cli\n")
    (fake / "pipelines" / "__init__.py").write_text("")
    (fake / "pipelines" / "jobs.py").write_text("from .. import model\nimport epee_annotate.cli.jobs\n")
    monkeypatch.setattr(f"{__name__}.PACKAGE", fake)
    problems = upward_imports()
    assert any("model.py:2: epee_annotate.model (core) imports epee_annotate.pipelines" in p for p in problems)
    assert any("engine.py:1:" in p and "imports epee_annotate.cli (cli)" in p for p in problems)
    assert any("jobs.py:2:" in p and "epee_annotate.cli.jobs (cli)" in p for p in problems)
    assert not any("storage" in p or "jobs.py:1:" in p for p in problems)


@pytest.mark.parametrize("module", ["epee_annotate.pipelines.notes", "epee_annotate.cli.jobs"])
def test_every_module_has_a_layer(module):
    assert layer_of(module) is not None
