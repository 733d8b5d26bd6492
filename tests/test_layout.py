"""The package's import arrows, read from the source (``ast``): data -> graph -> sampler -> model -> train ->
evaluation/tools, each folder importing only what lies below it.

* ``sharding`` knows nothing of the package; ``model`` imports nothing from the sampler, the trainer, the
  strategies, the distributed runtime or DeepSpeed;
* no module imports a ``_private`` name from another folder;
* only ``cli.py`` imports the command modules.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

from helpers import REPO

PACKAGE = REPO / "metammf_dist"
# folder -> the package folders (and top-level modules) it may import; its own folder is always allowed
ALLOWED = {
    "graph": {"errors"},
    "data": {"errors", "config"},
    "sampler": {"graph", "errors", "config"},
    "model": {"graph", "errors", "config"},
    "evaluation": set(),
    "distributed": {"config", "errors"},
    "strategies": {"distributed", "errors", "config"},
    "train": {"config", "errors", "procmem", "data", "graph", "sampler", "model", "strategies", "distributed",
              "evaluation"},
    # a tools folder: drives `train` as a child process, reads run folders (restore) and datasets
    "ablation": {"config", "errors", "data", "model", "train", "distributed"},
}
FORBIDDEN_THIRD_PARTY = {"model": {"deepspeed", "horovod"}, "graph": {"deepspeed"}, "sampler": {"deepspeed"},
                         "evaluation": {"deepspeed"}, "data": {"deepspeed", "torch.distributed"}}


def _imports(path: Path):
    """(module, imported names) of every import in ``path``, relative imports resolved."""
    tree = ast.parse(path.read_text())
    package = ".".join(path.relative_to(REPO).with_suffix("").parts[:-1])
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, []
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([module] if module else []))
            yield module, [alias.name for alias in node.names]


def _folder(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def _sources():
    return sorted(p for p in PACKAGE.rglob("*.py"))


@pytest.mark.parametrize("folder", sorted(ALLOWED))
def test_each_folder_imports_only_what_lies_below_it(folder):
    wrong = []
    for path in sorted((PACKAGE / folder).rglob("*.py")):
        for module, _ in _imports(path):
            if module.startswith("metammf_dist."):
                target = _folder(module)
                if target != folder and target not in ALLOWED[folder]:
                    wrong.append(f"{path.relative_to(REPO)} imports {module}")
            elif any(module == bad or module.startswith(bad + ".") for bad in FORBIDDEN_THIRD_PARTY.get(folder, ())):
                wrong.append(f"{path.relative_to(REPO)} imports {module}")
    assert not wrong, "\n".join(wrong)


def test_sharding_knows_nothing_of_the_package():
    wrong = [f"{p.relative_to(REPO)} imports {m}" for p in sorted((REPO / "sharding").rglob("*.py"))
             for m, _ in _imports(p) if m.startswith("metammf_dist") or m in ("torch", "deepspeed")]
    assert not wrong, "\n".join(wrong)


def test_no_private_name_crosses_a_folder():
    wrong = []
    for path in _sources():
        own = path.relative_to(PACKAGE).parts[0] if len(path.relative_to(PACKAGE).parts) > 1 else ""
        for module, names in _imports(path):
            if module.startswith("metammf_dist.") and _folder(module) != own:
                private = [n for n in names if n.startswith("_") and not n.startswith("__")]
                if private or any(part.startswith("_") and not part.startswith("__") for part in module.split(".")):
                    wrong.append(f"{path.relative_to(REPO)}: from {module} import {', '.join(names)}")
    assert not wrong, "\n".join(wrong)


def test_only_the_cli_imports_the_commands():
    wrong = [f"{p.relative_to(REPO)} imports {m}" for p in _sources() if p.parent.name != "commands"
             and p.name != "cli.py" for m, _ in _imports(p) if m.startswith("metammf_dist.commands")]
    assert not wrong, "\n".join(wrong)


def test_the_checker_sees_imports():
    """The rules above are not vacuous: the checker finds the imports that do exist."""
    found = {m for m, _ in _imports(PACKAGE / "train" / "loop.py")}
    assert "metammf_dist.model.registry" in found and "metammf_dist.strategies" in found
    assert any(m.startswith("metammf_dist.graph") for m, _ in _imports(PACKAGE / "model" / "gcn.py"))
