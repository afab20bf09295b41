"""deploy/: every file checked as far as the tools here allow, and consistent with each other.

Tools that are not installed make their test skip, saying which; the structural checks
run everywhere (PyYAML only).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[3]
DEPLOY = ROOT / "deploy"
KUBERNETES = DEPLOY / "kubernetes"

yaml = pytest.importorskip("yaml")


def containerfile_uid() -> int:
    text = (DEPLOY / "Containerfile").read_text()
    users = re.findall(r"^USER\s+(\S+)", text, flags=re.MULTILINE)
    assert len(users) == 1, users
    uid, _, gid = users[0].partition(":")
    assert uid.isdigit(), f"USER {users[0]}: Kubernetes runAsNonRoot needs a numeric UID"
    assert not gid or gid.isdigit()
    return int(uid)


def manifests() -> list[dict[str, Any]]:
    docs = []
    for path in sorted(KUBERNETES.glob("*.yaml")):
        docs += [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
    return docs


def test_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.skip("systemd-analyze is not installed (Debian package systemd)")
    unit = (DEPLOY / "mammoseg.service").read_text()
    # verify checks that ExecStart exists: point it at this venv's console script.
    mammoseg = Path(shutil.which("mammoseg") or ROOT / ".venv" / "bin" / "mammoseg")
    if not mammoseg.exists():
        pytest.skip("no mammoseg console script to stand in for /opt/mammoseg/bin/mammoseg")
    (tmp_path / "mammoseg.service").write_text(
        unit.replace("/opt/mammoseg/bin/mammoseg", str(mammoseg))
    )
    done = subprocess.run(
        [tool, "verify", str(tmp_path / "mammoseg.service")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    # Unknown keys are only warned about (exit 0): any output is a defect.
    assert done.stderr.strip() == "" and done.stdout.strip() == "", done.stderr + done.stdout


def test_unit_does_not_restart_on_a_configuration_error() -> None:
    from service.cli import EXIT_BAD_SETTINGS

    unit = (DEPLOY / "mammoseg.service").read_text()
    assert f"RestartPreventExitStatus={EXIT_BAD_SETTINGS}" in unit
    assert "EnvironmentFile=-/etc/mammoseg/tokens.env" in unit
    assert re.search(r"^User=mammoseg$", unit, flags=re.MULTILINE)


def test_readme_systemd_steps_create_the_user_and_protect_the_tokens() -> None:
    readme = (DEPLOY / "README.md").read_text()
    assert "useradd --system" in readme
    assert re.search(r"install -m 0600 .*tokens\.env", readme)
    assert "mammoseg check-config" in readme


def test_image_runs_as_a_numeric_user_that_the_manifests_name() -> None:
    uid = containerfile_uid()
    deployments = [d for d in manifests() if d["kind"] == "Deployment"]
    assert deployments
    for deployment in deployments:
        pod = deployment["spec"]["template"]["spec"]
        name = deployment["metadata"]["name"]
        context = pod["securityContext"]
        assert context["runAsNonRoot"] is True, name
        assert context["runAsUser"] == uid and context["fsGroup"] == uid, name
        assert context["seccompProfile"] == {"type": "RuntimeDefault"}, name
        for container in pod["containers"]:
            security = container["securityContext"]
            assert security["allowPrivilegeEscalation"] is False, name
            assert security["capabilities"]["drop"] == ["ALL"], name
            if security.get("readOnlyRootFilesystem"):
                mounts = {m["mountPath"] for m in container["volumeMounts"]}
                assert {"/tmp", "/var/lib/mammoseg"} <= mounts, name


def test_dicom_service_is_reachable_from_outside_the_cluster() -> None:
    services = [d for d in manifests() if d["kind"] == "Service"]
    dicom = [s for s in services if any(p["name"] == "dicom" for p in s["spec"]["ports"])]
    assert dicom
    for service in dicom:
        assert service["spec"].get("type") in ("LoadBalancer", "NodePort"), service["metadata"]


def test_kubernetes_configmap_is_a_valid_config(tmp_path: Path) -> None:
    from service.settings import Settings

    (config,) = [d for d in manifests() if d["kind"] == "ConfigMap"]
    values = tomllib.loads(config["data"]["mammoseg.toml"])
    assert set(values) <= set(Settings.model_fields)
    assert values["read_access"] == "token"


# The Kubernetes release whose OpenAPI schemas the manifests are checked against.
KUBERNETES_VERSION = "1.30.0"


def schema_errors(docs: list[dict[str, Any]]) -> list[str]:
    """Each manifest checked, strictly, against the bundled Kubernetes schemas."""
    validator = pytest.importorskip("kubernetes_validate", reason="the test extra is not installed")
    errors = []
    for doc in docs:
        try:
            validator.validate(doc, KUBERNETES_VERSION, strict=True)
        except validator.ValidationError as error:
            errors.append(f"{doc['kind']}/{doc['metadata']['name']}: {error.message}")
    return errors


def test_manifests_pass_the_kubernetes_schemas() -> None:
    """kubernetes-validate (test extra) bundles the API schemas, so no cluster or download."""
    docs = manifests()
    assert {doc["kind"] for doc in docs} >= {"Deployment", "Service", "ConfigMap"}
    assert schema_errors(docs) == []


def test_the_schema_check_refuses_a_broken_manifest() -> None:
    def node_deployment() -> dict[str, Any]:
        (node,) = [
            d for d in manifests() if d["kind"] == "Deployment" and "node" in d["metadata"]["name"]
        ]
        return node

    misspelt = node_deployment()
    container = misspelt["spec"]["template"]["spec"]["containers"][0]
    container["securityContext"]["allowPrivilegeEscalaton"] = False  # strict: unknown field
    wrong_type = node_deployment()
    wrong_type["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"] = "x"
    assert [len(schema_errors([doc])) for doc in (misspelt, wrong_type)] == [1, 1]


def compose_command() -> list[str] | None:
    """`docker compose`, or Debian's docker-compose (1.29, which validates the same schema)."""
    docker = shutil.which("docker")
    if docker is not None:
        plugin = subprocess.run([docker, "compose", "version"], capture_output=True, timeout=30)
        if plugin.returncode == 0:
            return [docker, "compose"]
    standalone = shutil.which("docker-compose")
    return [standalone] if standalone else None


def compose_config(path: Path, tokens: bool = True) -> subprocess.CompletedProcess[str]:
    command = compose_command()
    if command is None:
        pytest.skip("neither `docker compose` nor docker-compose (Debian package) is installed")
    env = {"PATH": "/usr/bin:/bin", "HOME": str(path.parent)}
    if tokens:
        env |= {"MAMMOSEG_VIEWER_TOKEN": "v" * 24, "MAMMOSEG_ADMIN_TOKEN": "a" * 24}
    return subprocess.run(
        [*command, "-f", str(path), "config", "--quiet"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd=path.parent,
    )


def test_compose_config_validates() -> None:
    done = compose_config(DEPLOY / "compose.yaml")
    assert done.returncode == 0, done.stderr


def test_compose_validation_refuses_a_broken_file_and_missing_tokens(tmp_path: Path) -> None:
    broken = tmp_path / "compose.yaml"
    broken.write_text((DEPLOY / "compose.yaml").read_text().replace("healthcheck:", "healthchek:"))
    done = compose_config(broken)
    assert done.returncode != 0 and "healthchek" in done.stderr, done.stderr
    done = compose_config(DEPLOY / "compose.yaml", tokens=False)
    assert done.returncode != 0 and "MAMMOSEG_VIEWER_TOKEN" in done.stderr + done.stdout


def test_dockerignore_keeps_the_build_context_small_but_not_the_sources() -> None:
    ignored = {
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    assert {".git", ".venv", "runs", "data", "artifacts", ".test-home"} <= ignored
    copied = re.findall(r"^COPY (?!--from)(.+) \S+$", (DEPLOY / "Containerfile").read_text(), re.M)
    sources = {part for line in copied for part in line.split()}
    assert {"pyproject.toml", "README.md", "LICENSE", "service"} <= sources
    for source in sources:
        assert source not in ignored, source
        assert (ROOT / source).exists(), source


def test_flag_column_matches_the_serve_command() -> None:
    from service.cli import build_parser
    from service.settings import Settings

    serve = build_parser()._subparsers._group_actions[0].choices["serve"]  # type: ignore[union-attr]
    flags = {
        action.dest: option
        for action in serve._actions
        for option in action.option_strings
        if option.startswith("--") and action.dest in Settings.model_fields
    }
    rows = re.findall(r"^\| `(\w+)` \|([^|]*)\|", (DEPLOY / "README.md").read_text(), re.M)
    documented = {name: cell.strip() for name, cell in rows if name in Settings.model_fields}
    assert set(documented) == set(Settings.model_fields)
    for name, cell in documented.items():
        if name in flags:
            assert f"`{flags[name]}`" in cell, name
        else:
            assert cell == "", name
    example = (DEPLOY / "mammoseg.example.toml").read_text()
    header = " ".join(example.split("\n\n", 1)[0].replace("#", " ").split())
    assert f"{len(flags)} have a command-line flag" in header.replace("thirteen", "13")
    assert all(name in header for name in flags)
