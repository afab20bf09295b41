"""DESIGN.md's import direction, checked on the source: the node never needs TensorFlow."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FORBIDDEN = {
    "service": {"tensorflow", "keras", "tf2onnx", "model_export"},
    "dicom_node": {"tensorflow", "keras", "tf2onnx", "model_export", "service"},
    "model_export": {"service.app", "service.node", "service.worker", "service.cli"},
}


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_packages_follow_the_import_direction() -> None:
    problems = []
    for package, forbidden in FORBIDDEN.items():
        for path in sorted((ROOT / package).rglob("*.py")):
            for name in imported_modules(path):
                if any(name == bad or name.startswith(bad + ".") for bad in forbidden):
                    if (
                        package == "service"
                        and path.name == "cli.py"
                        and name == "model_export.cli"
                    ):
                        continue  # the CLI dispatches training commands lazily, behind the extra
                    problems.append(f"{path.relative_to(ROOT)} imports {name}")
    assert problems == []


def test_running_the_node_does_not_load_tensorflow() -> None:
    import subprocess
    import sys

    code = (
        "import sys, service.node, service.app, service.cli, dicom_node.scp; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('tensorflow', 'keras', 'tf2onnx')))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
    )
    assert out.stdout.strip() == "[]"
