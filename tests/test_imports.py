"""One dependency direction, no cycles, read from the import statements: ``arch`` imports nothing
of the project's other packages and no Lightning; ``data`` may import ``arch``; ``training`` may
import ``arch`` and ``data``; ``eval`` and ``slurm`` may import all of them; nothing imports the
``train`` entry point."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("arch", "data", "training", "eval", "slurm")
ALLOWED = {
    "arch": set(),
    "data": {"arch"},
    "training": {"arch", "data"},
    "eval": {"arch", "data", "training"},
    "slurm": {"arch", "data", "training"},
}


def imported_modules(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module)
    return found


def test_packages_import_only_downstream():
    violations = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            for module in imported_modules(path):
                top = module.split(".")[0]
                if top in PACKAGES and top != package and top not in ALLOWED[package]:
                    violations.append(f"{path.relative_to(ROOT)} imports {module}")
                if top == "train":
                    violations.append(f"{path.relative_to(ROOT)} imports the train.py entry point")
                if package == "arch" and top == "lightning":
                    violations.append(f"{path.relative_to(ROOT)} imports Lightning")
    assert not violations, "\n".join(violations)


def test_tests_do_not_import_train_for_a_side_effect():
    users = [p.relative_to(ROOT) for p in (ROOT / "tests").rglob("*.py") if "train" in imported_modules(p)]
    assert not users, users


def test_the_checker_sees_a_violation(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("import os\nfrom training.task import LMTask\nif True:\n    import eval.flops\n")
    assert {"os", "training.task", "eval.flops"} <= imported_modules(bad)
