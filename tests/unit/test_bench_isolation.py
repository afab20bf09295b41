"""Production never imports the benchmark, the shared test kit or the tests.

``service.bench`` (``mammoseg bench``) and ``service.testkit`` (synthetic images,
the node launcher) ship in the wheel, but the node, its workers, its API and
``dicom_node`` must work without them; ``service.cli`` loads the bench only when
``mammoseg bench`` is the command.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
#: Packages that may import the kit (and each other): they are not production.
NOT_PRODUCTION = ("service/bench", "service/testkit")
FORBIDDEN = ("service.bench", "service.testkit", "tests")


def production_files() -> list[Path]:
    files = [
        *sorted((ROOT / "service").rglob("*.py")),
        *sorted((ROOT / "dicom_node").rglob("*.py")),
    ]
    return [
        f
        for f in files
        if not any(f.relative_to(ROOT).as_posix().startswith(p + "/") for p in NOT_PRODUCTION)
    ]


def imported_modules(path: Path) -> set[str]:
    """Every absolute module an ``import`` or ``from ... import`` names, at any depth
    (inside functions too); ``from service import bench`` counts as ``service.bench``."""
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Call) and _dynamic_import(node):
            names.add(node.args[0].value)  # type: ignore[attr-defined]
    return names


def _dynamic_import(call: ast.Call) -> bool:
    """``importlib.import_module("x")`` / ``__import__("x")`` with a literal name."""
    func = call.func
    named = (isinstance(func, ast.Name) and func.id in ("__import__", "import_module")) or (
        isinstance(func, ast.Attribute) and func.attr == "import_module"
    )
    return (
        named
        and bool(call.args)
        and isinstance(call.args[0], ast.Constant)
        and isinstance(call.args[0].value, str)
    )


def forbidden(name: str) -> bool:
    # service.bench and bench_* modules alike (service.bench_node, ...).
    return name.startswith("service.bench") or any(
        name == bad or name.startswith(bad + ".") for bad in FORBIDDEN
    )


def test_production_never_imports_the_bench_the_kit_or_the_tests() -> None:
    files = production_files()
    assert ROOT / "service" / "cli.py" in files and ROOT / "dicom_node" / "scp.py" in files
    problems = [
        f"{path.relative_to(ROOT)} imports {name}"
        for path in files
        for name in sorted(imported_modules(path))
        if forbidden(name)
        # The one door: `mammoseg bench` runs the bench, imported only when chosen
        # (test_building_the_cli_parser_does_not_load_the_bench checks "only when chosen").
        and not (path == ROOT / "service" / "cli.py" and name.startswith("service.bench.run"))
    ]
    assert problems == []


def test_the_check_sees_imports_inside_functions(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text(
        "def f():\n"
        "    from service import bench\n"
        "    import tests.synthetic\n"
        "    from service.testkit.launch import start_node\n"
        "    import importlib; importlib.import_module('service.bench_node')\n"
    )
    found = {n for n in imported_modules(sample) if forbidden(n)}
    assert found >= {
        "service.bench",
        "tests.synthetic",
        "service.testkit.launch",
        "service.bench_node",
    }
    assert not forbidden("testsuite") and not forbidden("service.settings")


def test_building_the_cli_parser_does_not_load_the_bench() -> None:
    code = (
        "import sys, service.cli\n"
        "parser = service.cli.build_parser()\n"
        "try:\n"
        "    parser.parse_args(['serve', '--help'])\n"
        "except SystemExit:\n"
        "    pass\n"
        "loaded = sorted(m for m in sys.modules if m.startswith(('service.bench', "
        "'service.testkit', 'tests')))\n"
        "assert not loaded, loaded\n"
        "print('ok')\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().endswith("ok")
