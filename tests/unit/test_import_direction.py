"""The import rules of ``docs/architecture.md``, checked on the source.

Every ``import`` counts, those inside functions too (a lazy import is still a
dependency). The rules:

- ``dicom_node`` imports neither ``service`` nor ``model_export``;
- ``service`` never imports ``model_export``, TensorFlow, Keras or tf2onnx
  (one exception: ``service.cli`` hands training commands to
  ``model_export.cli``);
- ``service.imaging``, the array layer shared with training, imports only the
  standard library, numpy, scipy, Pillow, ``service.contract`` and itself;
- inside ``service``, a module imports only its own layer and those below
  (``SERVICE_LAYERS``; every module must be placed in one);
- ``model_export`` does not import the running node (``service.app``,
  ``.node``, ``.worker``, ``.cli``);
- no module of the three packages is part of an import cycle.

``tests/unit/test_bench_isolation.py`` adds that production never imports
the bench, the test kit or ``tests``.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("service", "dicom_node", "model_export")
FORBIDDEN = {
    "service": {"tensorflow", "keras", "tf2onnx", "model_export"},
    "dicom_node": {"tensorflow", "keras", "tf2onnx", "model_export", "service"},
    "model_export": {"service.app", "service.node", "service.worker", "service.cli"},
}
IMAGING_MAY_IMPORT = {"numpy", "scipy", "PIL", "service.contract", "service.imaging"}
#: The layers inside ``service``, lowest first: a module imports only its own layer and those
#: below. Every module must be placed (the longest matching prefix counts), so a new module
#: is a decision. The diagram in docs/architecture.md draws the same order.
SERVICE_LAYERS: tuple[tuple[str, ...], ...] = (
    # 0 values and arrays: no I/O beyond their own file
    (
        "service",  # the package itself (its __init__ imports nothing)
        "service.contract",
        "service.settings",
        "service.logs",
        "service.stats",
        "service.db",
        "service.imaging",
        "service.migrations",
        "service.faults",  # the test-only decoder fault (os.abort), armed by the wiring
        "service.times",  # ISO 8601 UTC for the API and the webhook bodies
        "service.viewer_link",  # the job page's viewer link from viewer_url_template
    ),
    (  # 1 engines: model, database, the audit trail's files and syslog
        "service.inference",
        "service.store",
        "service.access",
        "service.audit_trail",
    ),
    ("service.segmentation",),  # 2 the one segmentation step
    # 3 what happens to an image or a job
    (
        "service.pipeline",
        "service.upload",
        "service.worker",
        "service.exams",  # exam state, the study view and the exam SR
        "service.retention",
        "service.webhooks",  # serve's webhook sender
        "service.supervisor",  # serve's worker processes
    ),
    (  # 4 HTTP and the configuration check
        "service.api",
        "service.body_limit",
        "service.http_edge",
        "service.metrics",
        "service.web",
        "service.app",
        "service.config_check",
    ),
    ("service.node",),  # 5 the wiring
    ("service.segment_files", "service.cli", "service.__main__"),  # 6 commands
    ("service.bench", "service.testkit"),  # 7 tools, never imported below (test_bench_isolation)
)


def imported_modules(path: Path) -> set[str]:
    """Absolute module names; ``from a import b`` gives ``a`` and ``a.b`` (b may be a module)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def project_modules() -> dict[str, Path]:
    return {
        module_name(path): path
        for package in PACKAGES
        for path in sorted((ROOT / package).rglob("*.py"))
    }


def within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for start in graph:
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, edges = work[-1]
            for nxt in edges:
                if nxt not in index:
                    index[nxt] = low[nxt] = len(index)
                    stack.append(nxt)
                    on_stack.add(nxt)
                    work.append((nxt, iter(sorted(graph[nxt]))))
                    break
                if nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    if len(component) > 1:
                        found.append(sorted(component))
    return found


def test_packages_follow_the_import_direction() -> None:
    problems = []
    for package, forbidden in FORBIDDEN.items():
        for path in sorted((ROOT / package).rglob("*.py")):
            for name in imported_modules(path):
                if any(within(name, bad) for bad in forbidden):
                    lazy_training_cli = path == ROOT / "service" / "cli.py" and within(
                        name, "model_export.cli"
                    )
                    if lazy_training_cli:
                        continue  # the CLI dispatches training commands lazily, behind the extra
                    problems.append(f"{path.relative_to(ROOT)} imports {name}")
    assert problems == []


def service_layer(module: str) -> int | None:
    matches = [
        (len(prefix), layer)
        for layer, prefixes in enumerate(SERVICE_LAYERS)
        for prefix in prefixes
        if module == prefix or (prefix != "service" and within(module, prefix))
    ]
    return max(matches)[1] if matches else None


def layer_problems(graph: dict[str, set[str]]) -> list[str]:
    problems = []
    for module, imports in sorted(graph.items()):
        if not within(module, "service"):
            continue
        layer = service_layer(module)
        if layer is None:
            problems.append(f"{module} has no layer in SERVICE_LAYERS")
            continue
        for name in sorted(imports):
            target = service_layer(name) if within(name, "service") else None
            lazy_bench = module == "service.cli" and within(name, "service.bench")
            if target is not None and target > layer and not lazy_bench:
                problems.append(f"{module} (layer {layer}) imports {name} (layer {target})")
    return problems


def test_service_modules_import_only_their_layer_and_below() -> None:
    assert layer_problems(import_graph()) == []


def test_the_layer_check_sees_an_upward_import() -> None:
    graph = {"service.imaging.lesions": {"service.pipeline"}, "service.newthing": set()}
    assert layer_problems(graph) == [
        "service.imaging.lesions (layer 0) imports service.pipeline (layer 3)",
        "service.newthing has no layer in SERVICE_LAYERS",
    ]


def test_the_imaging_layer_imports_only_arrays_and_the_contract() -> None:
    stdlib = sys.stdlib_module_names
    problems = [
        f"{path.relative_to(ROOT)} imports {name}"
        for path in sorted((ROOT / "service" / "imaging").rglob("*.py"))
        for name in imported_modules(path)
        if name.split(".")[0] not in stdlib
        and not any(within(name, allowed) for allowed in IMAGING_MAY_IMPORT)
        and not within(name, "__future__")
    ]
    assert problems == []


#: The job store's roles (service/store/): each is changed on its own, so none imports another.
STORE_ROLES = ("claims", "admin", "audit", "reads", "housekeeping", "notices")
STORE_SHARED = ("service.db", "service.store.records", "service.store.sql")


def test_the_store_roles_share_only_the_database_the_records_and_the_sql() -> None:
    problems = [
        f"service.store.{role} imports {name}"
        for role in STORE_ROLES
        for name in imported_modules(ROOT / "service" / "store" / f"{role}.py")
        if within(name, "service") and not any(within(name, ok) for ok in STORE_SHARED)
    ]
    assert problems == []
    assert (ROOT / "service" / "store" / "claims.py").exists()  # the list names real files


def import_graph() -> dict[str, set[str]]:
    """Module -> the project modules it imports (function-level imports included)."""
    modules = project_modules()
    return {
        name: {m for m in imported_modules(path) if m in modules and m != name}
        for name, path in modules.items()
    }


def test_no_import_cycles() -> None:
    assert cycles(import_graph()) == []


def test_the_cycle_check_finds_a_cycle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert cycles(graph) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_the_rules_see_lazy_imports(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text("def f():\n    from service import pipeline\n    import model_export.cli\n")
    assert {"service", "service.pipeline", "model_export.cli"} <= imported_modules(sample)


def test_running_the_node_does_not_load_tensorflow() -> None:
    code = (
        "import sys, service.node, service.app, service.cli, dicom_node.scp; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('tensorflow', 'keras', 'tf2onnx')))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
    )
    assert out.stdout.strip() == "[]"
