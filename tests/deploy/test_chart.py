"""The Helm chart, linted and rendered by Helm's own Go SDK, validated against Kubernetes.

helm-python-sdk binds Helm v4's SDK through ctypes (no helm binary), and
kubernetes-validate holds the API schemas offline, so CI renders every ci/
scenario on every run. Each rendered ConfigMap is fed to the real
``sse-sidecar --check-config`` with the pod's own environment variable names.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from functools import cache
from pathlib import Path
from typing import Any

import helm_python as helm
import kubernetes_validate.utils as kv  # type: ignore[import-untyped]
import pytest
import yaml

from sidecar.config import parse_duration

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "sse-sidecar"
CI_VALUES = sorted((CHART / "ci").glob("*-values.yaml"))
SCENARIOS: list[Path | None] = [None, *CI_VALUES]
#: The oldest Kubernetes the chart supports and the newest the schemas know.
#: The console script of the venv running the tests (the installed package).
SSE_SIDECAR = str(Path(sys.executable).with_name("sse-sidecar"))
KUBE_VERSIONS = ("1.29.0", kv.latest_version())


def scenario_id(path: Path | None) -> str:
    return "default" if path is None else path.name


def scenario_values(path: Path | None) -> dict[str, Any]:
    if path is None:
        return {}
    values: dict[str, Any] = yaml.safe_load(path.read_text())
    return values


@cache
def chart() -> helm.Chart:
    return helm.Chart.load(CHART)


def render(values: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """{kind: [manifest, ...]} of the chart rendered as release "release" in "apps"."""
    rendered = chart().render(values, name="release", namespace="apps")
    by_kind: dict[str, list[dict[str, Any]]] = {}
    for template, text in rendered.items():
        if not template.endswith(".yaml"):
            continue
        for doc in yaml.safe_load_all(text):
            if doc:
                by_kind.setdefault(doc["kind"], []).append(doc)
    return by_kind


def sidecar_container(deployment: dict[str, Any]) -> dict[str, Any]:
    (container,) = [
        c
        for c in deployment["spec"]["template"]["spec"]["containers"]
        if c["name"] == "sse-sidecar"
    ]
    return container


@pytest.mark.parametrize("values_file", SCENARIOS, ids=scenario_id)
def test_lint_strict(values_file: Path | None) -> None:
    report = helm.lint(CHART, scenario_values(values_file), strict=True, namespace="apps")
    assert report["errors"] == []
    # Strict lint: only the icon recommendation (severity 1, info) may remain.
    assert [m for m in report["messages"] if m["severity"] >= 2] == []


def test_lint_reports_a_broken_template(tmp_path: Path) -> None:
    """The lint above can fail: a chart with an unclosed action does not pass."""
    broken = tmp_path / "sse-sidecar"
    chart().save_dir(tmp_path)
    (broken / "templates" / "broken.yaml").write_text("kind: {{ .Values.mode\n")
    report = helm.lint(broken, strict=True)
    assert report["errors"] or [m for m in report["messages"] if m["severity"] >= 3]


@pytest.mark.parametrize("kube_version", KUBE_VERSIONS)
@pytest.mark.parametrize("values_file", SCENARIOS, ids=scenario_id)
def test_manifests_validate_against_kubernetes(values_file: Path | None, kube_version: str) -> None:
    by_kind = render(scenario_values(values_file))
    core = [doc for kind, docs in by_kind.items() if kind != "ServiceMonitor" for doc in docs]
    assert {"ConfigMap", "Deployment", "Service"} <= set(by_kind)
    for doc in core:
        kv.validate(doc, kube_version, strict=True)


def test_kubernetes_validation_can_fail() -> None:
    (deployment,) = render({})["Deployment"]
    deployment["spec"]["template"]["spec"]["terminationGracePeriodSecond"] = 20
    with pytest.raises(kv.ValidationError, match="terminationGracePeriodSecond"):
        kv.validate(deployment, KUBE_VERSIONS[-1], strict=True)


def check_servicemonitor(monitor: dict[str, Any], service: dict[str, Any]) -> None:
    """The fields of monitoring.coreos.com/v1 ServiceMonitor the chart sets, checked by hand."""
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    spec = monitor["spec"]
    assert set(spec) <= {"jobLabel", "namespaceSelector", "selector", "endpoints"}
    assert spec["namespaceSelector"] == {"matchNames": [service["metadata"]["namespace"]]}
    assert spec["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    port_names = {p["name"] for p in service["spec"]["ports"]}
    allowed = {
        "port", "path", "scheme", "interval", "scrapeTimeout", "authorization",
        "relabelings", "metricRelabelings",
    }  # fmt: skip
    for endpoint in spec["endpoints"]:
        assert set(endpoint) <= allowed
        assert endpoint["port"] in port_names
        assert endpoint["path"] == "/metrics"
        assert endpoint["scheme"] in ("http", "https")
        for key in ("interval", "scrapeTimeout"):
            assert isinstance(endpoint[key], str)
        if "authorization" in endpoint:
            auth = endpoint["authorization"]
            assert auth["type"] == "Bearer"
            assert set(auth["credentials"]) == {"name", "key"}


@pytest.mark.parametrize("values_file", SCENARIOS, ids=scenario_id)
def test_rendered_pod_keeps_the_readme_promises(values_file: Path | None) -> None:
    values = chart().merge_values(scenario_values(values_file))
    by_kind = render(scenario_values(values_file))
    config = yaml.safe_load(by_kind["ConfigMap"][0]["data"]["sidecar.yaml"])
    (deployment,) = by_kind["Deployment"]
    pod = deployment["spec"]["template"]
    assert pod["metadata"]["annotations"]["checksum/config"]
    spec = pod["spec"]
    assert spec["enableServiceLinks"] is False
    assert spec["automountServiceAccountToken"] is False
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["runAsUser"] == 10001
    drain = parse_duration(config.get("drain_timeout", "10s"))
    grace = spec["terminationGracePeriodSeconds"]
    assert grace >= drain + 5, (grace, drain)
    if values.get("terminationGracePeriodSeconds") is None:  # null: derived
        assert grace == drain + 10

    sidecar = sidecar_container(deployment)
    security = sidecar["securityContext"]
    assert security["runAsNonRoot"] is True
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    assert security["seccompProfile"] == {"type": "RuntimeDefault"}
    ports = {p["name"]: p["containerPort"] for p in sidecar["ports"]}
    assert ports == {"http": config["listen"]["port"], "admin": config["admin"]["port"]}
    assert sidecar["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "admin"}
    readiness = sidecar["readinessProbe"]
    if values["adminToken"]["existingSecret"]:
        # /readyz needs the token: an exec probe sends it from the container's env.
        assert "/readyz" in " ".join(readiness["exec"]["command"])
        assert "SSE_SIDECAR_ADMIN__TOKEN" in " ".join(readiness["exec"]["command"])
    else:
        assert readiness["httpGet"] == {"path": "/readyz", "port": "admin"}
    mounts = {m["mountPath"]: m for m in sidecar["volumeMounts"]}
    assert mounts["/etc/sse-sidecar"]["readOnly"] is True
    assert "/tmp" in mounts

    (service,) = by_kind["Service"]
    service["metadata"].setdefault("namespace", "apps")
    assert {p["name"] for p in service["spec"]["ports"]} == {"http", "admin"}
    for monitor in by_kind.get("ServiceMonitor", []):
        check_servicemonitor(monitor, service)


def test_checksum_annotation_follows_the_config() -> None:
    def checksum(values: dict[str, Any]) -> str:
        (deployment,) = render(values)["Deployment"]
        annotation: str = deployment["spec"]["template"]["metadata"]["annotations"][
            "checksum/config"
        ]
        return annotation

    assert checksum({}) == checksum({})
    assert checksum({}) != checksum({"config": {"drain_timeout": "12s"}})


def pod_env(by_kind: dict[str, list[dict[str, Any]]]) -> dict[str, str]:
    """The sidecar's env vars as the pod would see them, each Secret value made up."""
    deployment = by_kind.get("Deployment")
    if not deployment:
        return {}
    env: dict[str, str] = {}
    for var in sidecar_container(deployment[0]).get("env") or []:
        if "valueFrom" in var:
            ref = var["valueFrom"]["secretKeyRef"]
            env[var["name"]] = f"secret-{ref['name']}-{ref['key']}"
            if var["name"] == "SSE_SIDECAR_BACKEND__URL":
                env[var["name"]] = "redis://:s3cret@redis.apps.svc:6379/0"
        else:
            env[var["name"]] = var["value"]
    return env


def check_config(config_text: str, env: dict[str, str], tmp_path: Path) -> str:
    path = tmp_path / "sidecar.yaml"
    path.write_text(config_text)
    clean = {k: v for k, v in os.environ.items() if not k.startswith("SSE_SIDECAR_")}
    result = subprocess.run(
        [SSE_SIDECAR, "--check-config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**clean, **env},
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout + result.stderr


@pytest.mark.parametrize("values_file", SCENARIOS, ids=scenario_id)
def test_rendered_config_passes_check_config(values_file: Path | None, tmp_path: Path) -> None:
    by_kind = render(scenario_values(values_file))
    (configmap,) = by_kind["ConfigMap"]
    check_config(configmap["data"]["sidecar.yaml"], pod_env(by_kind), tmp_path)


def test_check_config_rejects_a_bad_rendered_config(tmp_path: Path) -> None:
    by_kind = render({"config": {"drain_timeout": "soon"}})
    path = tmp_path / "sidecar.yaml"
    path.write_text(by_kind["ConfigMap"][0]["data"]["sidecar.yaml"])
    result = subprocess.run(
        [SSE_SIDECAR, "--check-config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode != 0
    assert "drain_timeout" in result.stdout + result.stderr


def test_sidecar_mode_without_app_renders_only_the_configmap() -> None:
    assert set(render({"mode": "sidecar"})) == {"ConfigMap"}


def test_ci_scenarios_cover_the_features() -> None:
    assert {p.name for p in CI_VALUES} >= {
        "standalone-values.yaml",
        "sidecar-values.yaml",
        "redis-values.yaml",
        "redis-cluster-values.yaml",
        "dialect-values.yaml",
        "websocket-values.yaml",
        "websocket-file-values.yaml",
    }


# --- values.schema.json: good values pass, a typo or a wrong type fails, named -------------


@pytest.mark.parametrize("values_file", SCENARIOS, ids=scenario_id)
def test_schema_accepts_the_scenarios(values_file: Path | None) -> None:
    chart().validate_schema(scenario_values(values_file))


@pytest.mark.parametrize(
    ("values", "named"),
    [
        ({"replicaCout": 2}, "replicaCout"),
        ({"image": {"tagg": "1.0"}}, "tagg"),
        ({"redisUrl": {"existingSecet": "redis"}}, "existingSecet"),
        (
            {"websocketTokens": [{"route": "agent", "existingSecret": "gw", "mountpath": "/x"}]},
            "mountpath",
        ),
        ({"metrics": {"serviceMonitor": {"enable": True}}}, "enable"),
        ({"replicaCount": "two"}, "/replicaCount"),
        ({"service": {"port": "http"}}, "/service/port"),
        ({"livenessProbe": {"enabled": "yes"}}, "/livenessProbe/enabled"),
        ({"mode": "daemon"}, "/mode"),
        ({"websocketTokens": [{"route": "agent"}]}, "existingSecret"),
    ],
)
def test_schema_rejects_typos_and_wrong_types(values: dict[str, Any], named: str) -> None:
    with pytest.raises(helm.HelmValuesError, match=re.escape(named)):
        chart().validate_schema(values)
    # The render, as at install, refuses them too.
    with pytest.raises(helm.HelmError, match=re.escape(named)):
        chart().render(values, name="release", namespace="apps")


# --- the README's Kubernetes commands, as a user runs them -----------------------------------


def readme_commands() -> list[list[str]]:
    """The shell commands of the README's "Kubernetes (Helm)" block, split like a shell."""
    text = (ROOT / "README.md").read_text()
    section = text.split("### Kubernetes (Helm)", 1)[1]
    block = section.split("```sh\n", 1)[1].split("```", 1)[0]
    joined = block.replace("\\\n", " ")
    return [shlex.split(line) for line in joined.splitlines() if line and not line.startswith("#")]


def secret_refs(by_kind: dict[str, list[dict[str, Any]]]) -> set[str]:
    """Names of the Secrets the rendered pods read (env secretKeyRef and secret volumes)."""
    names: set[str] = set()
    for deployment in by_kind.get("Deployment", []):
        spec = deployment["spec"]["template"]["spec"]
        for var in sidecar_container(deployment).get("env", []):
            if "valueFrom" in var:
                names.add(var["valueFrom"]["secretKeyRef"]["name"])
        names.update(v["secret"]["secretName"] for v in spec["volumes"] if "secret" in v)
    return names


def test_readme_helm_commands_render_and_validate() -> None:
    commands = readme_commands()
    installs = [c for c in commands if c[:2] == ["helm", "install"]]
    assert len(installs) >= 4
    created: set[str] = set()
    for command in commands:
        if command[:4] == ["kubectl", "create", "secret", "generic"]:
            created.add(command[4])
            continue
        assert command[:2] == ["helm", "install"], command
        assert (ROOT / command[3]).resolve() == CHART
        values: dict[str, Any] = {}
        args = iter(command[4:])
        for flag in args:
            if flag == "--set-json":
                values = {**values, **helm.parse_set_json(next(args))}
            elif flag == "-f":
                values = {**values, **yaml.safe_load((ROOT / next(args)).read_text())}
            else:
                pytest.fail(f"README: unknown helm flag {flag}")
        helm.validate_release_name(command[2])
        chart().validate_schema(values)
        by_kind = render(values)
        for doc in (d for kind, docs in by_kind.items() if kind != "ServiceMonitor" for d in docs):
            kv.validate(doc, KUBE_VERSIONS[-1], strict=True)
        # Every Secret the pods read is one the README told the user to create.
        assert secret_refs(by_kind) <= created, (command, secret_refs(by_kind) - created)
