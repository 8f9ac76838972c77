"""Config tests: defaults, unit parsing, one error naming key and value, env overrides, load()."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import pytest

from sidecar.config import (
    Admin,
    Backend,
    Config,
    Heartbeat,
    Keepalive,
    Limits,
    Listen,
    Logging,
    Resume,
    Route,
    Session,
    Stream,
    Terminal,
    from_mapping,
    load,
    parse_duration,
    parse_size,
)
from sidecar.errors import ConfigError

SHIPPED = Path(__file__).resolve().parents[2] / "config" / "sidecar.yaml"
MiB = 1024 * 1024


def route(**overrides: Any) -> dict[str, Any]:
    return {"name": "chat", "path": "/v1/chat", "upstream": "http://127.0.0.1:8000", **overrides}


def config(*routes: dict[str, Any], **top: Any) -> dict[str, Any]:
    return {"routes": list(routes) if routes else [route()], **top}


def error_of(data: Any, environ: dict[str, str] | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        from_mapping(data, environ)
    return str(info.value)


# --- defaults -------------------------------------------------------------------


def test_limit_defaults_are_exact() -> None:
    assert Limits() == Limits(
        max_event_bytes=MiB,
        max_line_bytes=MiB,
        max_body_bytes=MiB,
        max_passthrough_bytes=MiB,
        connect_timeout=10.0,
        idle_timeout=300.0,
        max_duration=3600.0,
        write_timeout=30.0,
    )


def test_every_limit_default_is_positive_and_consistent() -> None:
    limits = Limits()
    for f in dataclasses.fields(Limits):
        assert getattr(limits, f.name) > 0, f.name
    # A heartbeat must fit well inside the idle timeout and the stream cap.
    assert Heartbeat().interval == 3.0  # under httpx's default 5 s read timeout
    assert Heartbeat().interval < limits.idle_timeout < limits.max_duration
    assert limits.connect_timeout < limits.idle_timeout


def test_other_defaults() -> None:
    assert Resume() == Resume(False, 30.0, 1000, 4 * MiB, 300.0)
    assert Session() == Session(
        "header:X-Session-Key", "replace", False, r"^[A-Za-z0-9._:-]{1,128}$"
    )
    assert Keepalive() == Keepalive("keepalive", '{"type":"keepalive"}')
    assert Terminal() == Terminal(("done", "final"), ("[DONE]",))
    assert Stream() == Stream(None, None, 1.0)
    assert Listen() == Listen("127.0.0.1", 8080)
    assert Admin() == Admin("127.0.0.1", 9090, None)
    assert Backend() == Backend("memory", "redis://127.0.0.1:6379/0")
    assert Logging() == Logging("info", "auto")


def test_minimal_config_gets_every_default() -> None:
    loaded = from_mapping({"routes": [route()]})
    assert loaded == Config(routes=(Route("chat", "/v1/chat", "http://127.0.0.1:8000"),))
    assert (loaded.workers, loaded.max_streams) == (1, 20000)
    assert (loaded.drain_timeout, loaded.shutdown_retry) == (10.0, 1.0)
    assert loaded.routes[0].methods == ("GET", "POST")
    assert loaded.routes[0].comments == "convert"


# --- durations and sizes -------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "seconds"),
    [
        ("250ms", 0.25),
        ("15s", 15.0),
        ("5m", 300.0),
        ("1h", 3600.0),
        ("1.5h", 5400.0),
        (" 15 s ", 15.0),
        ("0", 0.0),
        ("42", 42.0),
        (15, 15.0),
        (2.5, 2.5),
        (0, 0.0),
    ],
)
def test_parse_duration(raw: object, seconds: float) -> None:
    parsed = parse_duration(raw)
    assert parsed == seconds
    assert type(parsed) is float


@pytest.mark.parametrize(
    ("raw", "size"),
    [
        ("1MiB", MiB),
        ("64KiB", 65536),
        ("1GiB", 1024**3),
        ("10B", 10),
        ("1KB", 1000),
        ("2MB", 2_000_000),
        ("1000", 1000),
        (1000, 1000),
        (0, 0),
    ],
)
def test_parse_size(raw: object, size: int) -> None:
    parsed = parse_size(raw)
    assert parsed == size
    assert type(parsed) is int


def test_units_apply_inside_a_route() -> None:
    data = route(
        heartbeat={"interval": "250ms"},
        resume={"grace": "5m", "buffer_bytes": "64KiB", "retention": "1h"},
        limits={"max_event_bytes": "1MiB", "max_line_bytes": 1000, "idle_timeout": 15},
    )
    r = from_mapping(config(data)).routes[0]
    assert r.heartbeat.interval == 0.25
    assert (r.resume.grace, r.resume.buffer_bytes, r.resume.retention) == (300.0, 65536, 3600.0)
    assert (r.limits.max_event_bytes, r.limits.max_line_bytes) == (MiB, 1000)
    assert r.limits.idle_timeout == 15.0


@pytest.mark.parametrize("bad", ["soon", "15x", "-1s", "1.5.2s", "", "15 S", True, -1, [15]])
def test_bad_duration_names_key_and_value(bad: object) -> None:
    message = error_of(config(route(heartbeat={"interval": bad})))
    assert message.startswith("routes[0].heartbeat.interval: ")
    assert repr(bad) in message


@pytest.mark.parametrize("bad", ["1.5MiB", "1TB", "lots", "-1", True, -1, 1.5])
def test_bad_size_names_key_and_value(bad: object) -> None:
    message = error_of(config(route(limits={"max_event_bytes": bad})))
    assert message.startswith("routes[0].limits.max_event_bytes: ")
    assert repr(bad) in message


def test_bad_duration_message_is_exact() -> None:
    assert error_of(config(route(heartbeat={"interval": "soon"}))) == (
        "routes[0].heartbeat.interval: expected a duration like 250ms, 15s, 5m or 1h, got 'soon'"
    )
    assert error_of(config(drain_timeout=-2)) == (
        "drain_timeout: a duration must be a finite number >= 0, got -2"
    )


def test_huge_integer_duration_is_a_config_error() -> None:
    # Regression: float(10**400) raises OverflowError, which once escaped as a traceback.
    message = error_of(config(route(limits={"idle_timeout": 10**400})))
    assert message.startswith("routes[0].limits.idle_timeout: ")


# --- keys: unknown, missing, types ---------------------------------------------------


@pytest.mark.parametrize(
    ("data", "key", "known"),
    [
        (config(listn={"port": 1}), "listn", {"listen", "admin", "routes", "workers", "backend"}),
        (config(route(heartbeat={"intervl": "5s"})), "routes[0].heartbeat.intervl", {"interval"}),
        (
            config(route(), route(name="b", path="/b", limits={"idle": 1})),
            "routes[1].limits.idle",
            {"idle_timeout", "max_event_bytes", "max_duration", "write_timeout"},
        ),
        (
            # The YAML key is "from"; the Python field name is not a key.
            config(route(session={"from_": "cookie:sid"})),
            "routes[0].session.from_",
            {"from", "pattern", "policy", "required"},
        ),
    ],
)
def test_unknown_key_is_named(data: dict[str, Any], key: str, known: set[str]) -> None:
    message = error_of(data)
    prefix = f"{key}: unknown key (known: "
    assert message.startswith(prefix)
    assert message.endswith(")")
    listed = message[len(prefix) : -1].split(", ")
    assert listed == sorted(listed)
    assert known <= set(listed)
    assert key.rsplit(".", 1)[-1] not in listed


def test_unknown_key_message_is_exact() -> None:
    assert error_of(config(route(heartbeat={"intervl": "5s"}))) == (
        "routes[0].heartbeat.intervl: unknown key (known: interval)"
    )


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({}, "routes: required key is missing"),
        (None, "routes: required key is missing"),
        ({"workers": 1}, "routes: required key is missing"),
        ({"routes": []}, "routes: at least one route is required"),
        ({"routes": None}, "routes: expected a list, got None"),
        (
            {"routes": [{"path": "/a", "upstream": "http://a"}]},
            "routes[0].name: required key is missing",
        ),
        (
            {"routes": [{"name": "a", "upstream": "http://a"}]},
            "routes[0].path: required key is missing",
        ),
        ({"routes": [{"name": "a", "path": "/a"}]}, "routes[0].upstream: required key is missing"),
        ({"routes": ["chat"]}, "routes[0]: expected a mapping, got 'chat'"),
        ([1, 2], "config: expected a mapping at the top level, got [1, 2]"),
    ],
)
def test_missing_required_key_is_named(data: Any, message: str) -> None:
    assert error_of(data) == message


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (
            config(route(comments="merge")),
            "routes[0].comments: must be one of convert, pass, drop, got 'merge'",
        ),
        (
            config(route(session={"policy": "kick"})),
            "routes[0].session.policy: must be one of replace, reject, got 'kick'",
        ),
        (
            config(backend={"kind": "etcd"}),
            "backend.kind: must be one of memory, redis, got 'etcd'",
        ),
        (
            config(logging={"format": "xml"}),
            "logging.format: must be one of auto, json, console, got 'xml'",
        ),
    ],
)
def test_literal_option_lists_the_allowed_values(data: dict[str, Any], message: str) -> None:
    assert error_of(data) == message


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (
            config(route(session={"required": "yes"})),
            "routes[0].session.required: expected true or false, got 'yes'",
        ),
        (
            config(route(resume={"enabled": 1})),
            "routes[0].resume.enabled: expected true or false, got 1",
        ),
        (config(workers=True), "workers: expected a whole number, got True"),
        (config(listen={"port": "8080"}), "listen.port: expected a whole number, got '8080'"),
        (config(listen={"port": 8080.0}), "listen.port: expected a whole number, got 8080.0"),
        (
            config(route(resume={"buffer_events": 1.5})),
            "routes[0].resume.buffer_events: expected a whole number, got 1.5",
        ),
        (config(listen={"host": 5}), "listen.host: expected a string, got 5"),
        (config(listen="0.0.0.0:80"), "listen: expected a mapping, got '0.0.0.0:80'"),
        (config(route(methods="GET")), "routes[0].methods: expected a list, got 'GET'"),
        (
            config(route(terminal={"events": ["done", 1]})),
            "routes[0].terminal.events[1]: expected a string, got 1",
        ),
    ],
)
def test_types_are_strict(data: dict[str, Any], message: str) -> None:
    assert error_of(data) == message


def test_optional_values_accept_null() -> None:
    r = from_mapping(config(route(stream={"retry": None, "open_event": None}))).routes[0]
    assert r.stream == Stream(retry=None, open_event=None, commit_after=1.0)
    r = from_mapping(config(route(stream={"retry": "3s", "open_event": "open"}))).routes[0]
    assert r.stream == Stream(retry=3.0, open_event="open", commit_after=1.0)


def test_null_section_means_defaults() -> None:
    assert from_mapping(config(route(heartbeat=None), listen=None)).listen == Listen()


# --- validate(): checks across keys --------------------------------------------------


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (
            config(route(), route(path="/other")),
            "routes[1].name: duplicate route name 'chat'",
        ),
        (
            config(route(path="/a"), route(name="b", path="/a/")),
            "routes[1].path: must start with / and be unique, got '/a/'",
        ),
        (
            config(route(path="v1/chat")),
            "routes[0].path: must start with / and be unique, got 'v1/chat'",
        ),
        (
            config(route(upstream="ftp://example.com")),
            "routes[0].upstream: must be an absolute http(s):// or ws(s):// URL, got 'ftp://example.com'",
        ),
        (
            config(route(upstream="/relative")),
            "routes[0].upstream: must be an absolute http(s):// or ws(s):// URL, got '/relative'",
        ),
        (
            config(route(upstream="http:///nohost")),
            "routes[0].upstream: must be an absolute http(s):// or ws(s):// URL, got 'http:///nohost'",
        ),
        (
            config(route(upstream="http://a/x?k=v")),
            "routes[0].upstream: must not carry a query or fragment",
        ),
        (
            config(route(upstream="https://a/x#f")),
            "routes[0].upstream: must not carry a query or fragment",
        ),
        (
            config(route(methods=["GET", "PUT"])),
            "routes[0].methods: only GET and POST are streamed, got 'PUT'",
        ),
        (config(workers=0), "workers: must be at least 1, got 0"),
        (config(workers=-3), "workers: must be at least 1, got -3"),
        (config(max_streams=0), "max_streams: must be at least 1, got 0"),
        (config(listen={"port": 65536}), "listen.port: must be 0..65535, got 65536"),
        (config(admin={"port": -1}), "admin.port: must be 0..65535, got -1"),
        (
            config(route(resume={"enabled": True, "buffer_events": 0})),
            "routes[0].resume.buffer_events: must be at least 1 when resume is on",
        ),
    ],
)
def test_validate_names_the_key(data: dict[str, Any], message: str) -> None:
    assert error_of(data) == message


@pytest.mark.parametrize(
    "upstream",
    [
        "http://[::1",  # regression: yarl's ValueError once escaped instead of a ConfigError
        "http://127.0.0.1:99999",  # regression: same ("Port out of range 0-65535")
    ],
)
def test_unparsable_upstream_is_a_config_error(upstream: str) -> None:
    message = error_of(config(route(upstream=upstream)))
    assert message.startswith("routes[0].upstream: ")
    assert repr(upstream) in message


@pytest.mark.parametrize(
    "source",
    [
        "header",
        "header:",
        "body:x",
        "path:x",
        "path:-1",
        "header:X Key",
        "X-Session-Key",
        "cookie:a;b",
        "header:X-Key\n",  # regression: `$` also matches before a final newline
        "path:1\n",  # regression: same
    ],
)
def test_bad_session_source(source: str) -> None:
    assert error_of(config(route(session={"from": source}))) == (
        "routes[0].session.from: expected header:NAME, cookie:NAME, query:NAME or path:N, "
        f"got {source!r}"
    )


@pytest.mark.parametrize(
    "source", ["header:X-Session-Key", "cookie:sid", "query:session", "path:2"]
)
def test_good_session_source(source: str) -> None:
    assert from_mapping(config(route(session={"from": source}))).routes[0].session.from_ == source


def test_bad_session_pattern() -> None:
    message = error_of(config(route(session={"pattern": "([a-z"})))
    assert message.startswith("routes[0].session.pattern: not a valid regular expression: ")


@pytest.mark.parametrize(
    "name", ["max_event_bytes", "max_line_bytes", "idle_timeout", "max_duration"]
)
def test_non_positive_limit(name: str) -> None:
    assert error_of(config(route(limits={name: 0}))) == (
        f"routes[0].limits.{name}: must be greater than 0"
    )


@pytest.mark.parametrize("value", [math.nan, math.inf])
def test_non_finite_limit_is_rejected(value: float) -> None:
    # YAML `.nan` would pass `<= 0`: every comparison with NaN is False.
    assert error_of(config(route(limits={"idle_timeout": value}))) == (
        f"routes[0].limits.idle_timeout: a duration must be a finite number >= 0, got {value!r}"
    )


def test_zero_heartbeat_and_disabled_resume_buffer_are_allowed() -> None:
    r = from_mapping(config(route(heartbeat={"interval": 0}, resume={"buffer_events": 0}))).routes[
        0
    ]
    assert (r.heartbeat.interval, r.resume.buffer_events) == (0.0, 0)


# --- environment overrides -------------------------------------------------------------


def test_env_port_is_read_as_a_yaml_scalar() -> None:
    loaded = from_mapping(config(), {"SSE_SIDECAR_LISTEN__PORT": "8081"})
    assert loaded.listen == Listen("127.0.0.1", 8081)


def test_env_overrides_route_by_name_and_by_index() -> None:
    environ = {
        "SSE_SIDECAR_ROUTES__CHAT__UPSTREAM": "http://10.0.0.5:8000/v1/chat",
        "SSE_SIDECAR_ROUTES__1__HEARTBEAT__INTERVAL": "5s",
        "SSE_SIDECAR_ROUTES__JOBS__SESSION__REQUIRED": "true",
        "SSE_SIDECAR_ROUTES__0__TERMINAL__EVENTS": "[end]",
        "SSE_SIDECAR_ROUTES__CHAT__SESSION__FROM": "query:sid",
        "SSE_SIDECAR_WORKERS": "4",
        "SSE_SIDECAR_BACKEND__KIND": "redis",
    }
    loaded = from_mapping(config(route(), route(name="Jobs", path="/jobs")), environ)
    chat, jobs = loaded.routes
    assert chat.upstream == "http://10.0.0.5:8000/v1/chat"
    assert chat.terminal.events == ("end",)
    assert chat.session.from_ == "query:sid"
    assert (jobs.heartbeat.interval, jobs.session.required) == (5.0, True)
    assert (chat.heartbeat.interval, chat.session.required) == (3.0, False)
    assert (loaded.workers, loaded.backend.kind) == (4, "redis")


@pytest.mark.parametrize("part", ["NOPE", "2"])
def test_env_unknown_route_names_the_variable(part: str) -> None:
    var = f"SSE_SIDECAR_ROUTES__{part}__UPSTREAM"
    assert error_of(config(route(), route(name="b", path="/b")), {var: "http://x"}) == (
        f"{var}: no route named or numbered {part.lower()!r}"
    )


def test_env_values_are_checked_like_the_file() -> None:
    assert error_of(config(), {"SSE_SIDECAR_LISTEN__PORT": "abc"}) == (
        "listen.port: expected a whole number, got 'abc'"
    )
    assert error_of(config(), {"SSE_SIDECAR_LISTEN__PROT": "1"}) == (
        "listen.prot: unknown key (known: host, port)"
    )
    message = error_of(config(), {"SSE_SIDECAR_LISTEN__PORT": "[unclosed"})
    assert message.startswith("listen.port: not a valid value '[unclosed': ")


@pytest.mark.parametrize("token", ["123456", "#s3cret", "null", "[x", "true"])
def test_env_text_keys_stay_text(token: str) -> None:
    loaded = from_mapping(config(), {"SSE_SIDECAR_ADMIN__TOKEN": token})
    assert loaded.admin.token == token


def test_env_vars_outside_the_config_are_ignored() -> None:
    # What Kubernetes injects for a Service named sse-sidecar.
    environ = {
        "SSE_SIDECAR_PORT": "tcp://10.0.0.1:8080",
        "SSE_SIDECAR_SERVICE_HOST": "10.0.0.1",
        "SSE_SIDECAR_PORT_8080_TCP_ADDR": "10.0.0.1",
    }
    assert from_mapping(config(), environ) == from_mapping(config())


def test_env_var_below_a_scalar_names_the_variable() -> None:
    data = config(listen={"host": "127.0.0.1", "port": 8080})
    assert error_of(data, {"SSE_SIDECAR_LISTEN__PORT__X": "1"}) == (
        "SSE_SIDECAR_LISTEN__PORT__X: does not name a configuration key"
    )
    # Regression: one level deeper, `node.get` was once called on the int 8080.
    assert error_of(data, {"SSE_SIDECAR_LISTEN__PORT__X__Y": "1"}) == (
        "SSE_SIDECAR_LISTEN__PORT__X__Y: does not name a configuration key"
    )


def test_env_config_path_and_foreign_variables_are_not_overrides() -> None:
    environ = {
        "SSE_SIDECAR_CONFIG": "/etc/sse-sidecar/sidecar.yaml",
        "HOME": "/root",
        "sse_sidecar_workers": "9",  # the prefix is case-sensitive
    }
    assert from_mapping(config(), environ) == from_mapping(config())


def test_from_mapping_without_environ_ignores_the_process_env(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SSE_SIDECAR_WORKERS", "7")
    assert from_mapping(config()).workers == 1


# --- load() and immutability ------------------------------------------------------------


def test_load_shipped_config() -> None:
    expected = Config(
        routes=(
            Route(
                name="chat",
                path="/v1/chat",
                upstream="http://127.0.0.1:8000/v1/chat",
                # Spelled out in the file, so it loads as set, not as the default.
                session=Session(bind=("header:Authorization", "header:Cookie")),
                stream=Stream(retry=3.0, open_event=None, commit_after=1.0),
            ),
            # The demo page and its resumable stream (scripts/demo).
            Route(
                name="demo-page",
                path="/demo",
                upstream="http://127.0.0.1:8000/demo",
                methods=("GET",),
            ),
            Route(
                name="demo-chat",
                path="/v1/demo-chat",
                upstream="http://127.0.0.1:8000/v1/chat",
                methods=("GET",),
                session=Session(from_="query:session", required=True),
                resume=Resume(enabled=True),
                stream=Stream(retry=1.0),
            ),
        ),
    )
    loaded = load(SHIPPED, environ={})
    assert loaded == expected
    assert loaded.routes[0].limits.max_event_bytes == MiB
    assert loaded.routes[0].limits.max_duration == 3600.0


def test_load_reads_os_environ_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SSE_SIDECAR_LISTEN__PORT", "8081")
    assert load(SHIPPED).listen.port == 8081
    assert load(SHIPPED, environ={}).listen.port == 8080


def test_load_missing_file_names_it(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError) as info:
        load(path, environ={})
    assert str(info.value) == f"{path}: cannot read the config file: No such file or directory"


def test_load_invalid_yaml_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("routes: [\n", encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load(path, environ={})
    assert str(info.value).startswith(f"{path}: not valid YAML: ")


def test_load_invalid_utf8_names_the_file(tmp_path: Path) -> None:
    # Regression: UnicodeDecodeError is not an OSError and once escaped as a traceback.
    path = tmp_path / "latin1.yaml"
    path.write_bytes(SHIPPED.read_bytes() + b"# caf\xe9\n")
    with pytest.raises(ConfigError) as info:
        load(path, environ={})
    assert str(info.value).startswith(f"{path}: ")


def test_load_empty_file_asks_for_routes(tmp_path: Path) -> None:
    path = tmp_path / "empty.yaml"
    path.write_text("", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"^routes: required key is missing$"):
        load(path, environ={})


def test_config_objects_are_frozen() -> None:
    loaded = load(SHIPPED, environ={})
    with pytest.raises(dataclasses.FrozenInstanceError):
        loaded.workers = 2  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        loaded.routes[0].limits.idle_timeout = 1.0  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        loaded.routes[0].session.from_ = "cookie:x"  # type: ignore[misc]
    assert isinstance(loaded.routes, tuple)
    assert isinstance(loaded.routes[0].terminal.events, tuple)


def test_resume_buffer_must_hold_one_event() -> None:
    with pytest.raises(ConfigError) as err:
        from_mapping(
            {
                "routes": [
                    {
                        "name": "r",
                        "path": "/r",
                        "upstream": "http://127.0.0.1:1",
                        "resume": {"enabled": True, "buffer_bytes": "1KiB"},
                        "limits": {"max_event_bytes": "4KiB"},
                    }
                ]
            }
        )
    assert str(err.value).startswith("routes[0].resume.buffer_bytes: must hold at least one event")


def test_sessions_bind_authorization_and_cookie_by_default() -> None:
    r = from_mapping(config(route())).routes[0]
    assert r.bind == ("header:Authorization", "header:Cookie")
    bound = from_mapping(config(route(session={"bind": ["cookie:sid", "header:X-Key"]})))
    assert bound.routes[0].bind == ("cookie:sid", "header:X-Key")
    assert from_mapping(config(route(session={"bind": []}))).routes[0].bind == ()


def test_resume_bind_is_still_read_as_the_old_name_of_session_bind() -> None:
    # Configs written when only resume routes were bound keep working, and
    # bind the route's plain replaces too.
    bound = from_mapping(config(route(resume={"bind": ["cookie:sid"]})))
    assert bound.routes[0].bind == ("cookie:sid",)
    assert from_mapping(config(route(resume={"bind": []}))).routes[0].bind == ()
    both = route(session={"bind": ["cookie:sid"]}, resume={"bind": ["cookie:sid"]})
    assert from_mapping(config(both)).routes[0].bind == ("cookie:sid",)


def test_session_bind_and_its_old_name_must_not_disagree() -> None:
    clash = route(session={"bind": ["cookie:sid"]}, resume={"bind": []})
    assert error_of(config(clash)) == (
        "routes[0].resume.bind: the old name of session.bind, and the two differ "
        "([] against ['cookie:sid']); set session.bind only"
    )


@pytest.mark.parametrize("block", ["session", "resume"])
@pytest.mark.parametrize("source", ["query:token", "header:", "cookie:a b", "Authorization"])
def test_bind_names_a_header_or_cookie(block: str, source: str) -> None:
    assert error_of(config(route(**{block: {"bind": ["header:Authorization", source]}}))) == (
        f"routes[0].{block}.bind[1]: expected header:NAME or cookie:NAME, got {source!r}"
    )


def test_session_bind_from_the_environment() -> None:
    environ = {"SSE_SIDECAR_ROUTES__CHAT__SESSION__BIND": "[cookie:sid]"}
    assert from_mapping(config(route()), environ).routes[0].bind == ("cookie:sid",)


def test_backend_pool_size_is_at_least_two() -> None:
    assert from_mapping(config()).backend.pool_size == 6
    assert from_mapping(config(backend={"pool_size": 2})).backend.pool_size == 2
    assert error_of(config(backend={"pool_size": 1})) == (
        "backend.pool_size: must be at least 2 (the replace channel holds one), got 1"
    )


# --- validation at the exact edges -------------------------------------------------


@pytest.mark.parametrize(
    "data",
    [
        config(listen={"port": 65535}, admin={"port": 0}),
        config(listen={"port": 0}, admin={"port": 65535}),
        config(max_streams=1, workers=1),
        config(workers=2, backend={"kind": "redis"}),
        config(backend={"lease": "1s"}),
        config(route(resume={"enabled": True, "buffer_events": 1})),
        config(
            route(
                resume={"enabled": True, "buffer_bytes": "4KiB"}, limits={"max_event_bytes": "4KiB"}
            )
        ),
        config(route(upstream="ws://127.0.0.1:9000/gw")),
        config(route(upstream="wss://gw.example/x", websocket={})),
        config(probe_path="/healthz"),
        config(probe_path=None),
        config(route(limits=dict.fromkeys(("idle_timeout", "max_duration"), "1ms"))),
        config(route(limits={"max_event_bytes": 1, "max_line_bytes": 1})),
    ],
)
def test_validate_accepts_values_at_the_edge(data: dict[str, Any]) -> None:
    assert from_mapping(data).routes[0].name == "chat"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (
            config(workers=2),
            "workers: 2 processes need backend.kind: redis, so that one session has one "
            "stream across them (the memory backend sees one process only)",
        ),
        (config(backend={"lease": 0.5}), "backend.lease: must be at least 1s, got 0.5s"),
        (
            config(
                route(
                    resume={"enabled": True, "buffer_bytes": 4095},
                    limits={"max_event_bytes": "4KiB"},
                )
            ),
            "routes[0].resume.buffer_bytes: must hold at least one event "
            "(limits.max_event_bytes = 4096), got 4095",
        ),
        (
            config(route(upstream="http://127.0.0.1:8000", websocket={})),
            "routes[0].websocket: only for ws:// or wss:// upstreams",
        ),
        (
            config(route(upstream="ws://127.0.0.1:9000/gw?x=1")),
            "routes[0].upstream: must not carry a query or fragment",
        ),
        (
            config(probe_path="healthz"),
            "probe_path: must start with / and differ from every route path, got 'healthz'",
        ),
        (
            config(probe_path="/v1/chat/"),
            "probe_path: must start with / and differ from every route path, got '/v1/chat/'",
        ),
        (
            config(route(), route(name="other", path="/v1/chat/")),
            "routes[1].path: must start with / and be unique, got '/v1/chat/'",
        ),
        (config(routes=[]), "routes: at least one route is required"),
        (
            config(route(methods=["GET", "POST", "DELETE"])),
            "routes[0].methods: only GET and POST are streamed, got 'DELETE'",
        ),
        (
            config(route(session={"from": "query:"})),
            "routes[0].session.from: expected header:NAME, cookie:NAME, query:NAME or path:N, "
            "got 'query:'",
        ),
    ],
)
def test_validate_rejects_one_past_the_edge(data: dict[str, Any], message: str) -> None:
    assert error_of(data) == message


@pytest.mark.parametrize(
    "name",
    [
        "max_event_bytes",
        "max_line_bytes",
        "idle_timeout",
        "max_duration",
        "connect_timeout",
        "write_timeout",
    ],
)
def test_each_limit_must_be_positive(name: str) -> None:
    assert error_of(config(route(limits={name: 0}))) == (
        f"routes[0].limits.{name}: must be greater than 0"
    )


def test_resume_off_ignores_its_buffer_sizes() -> None:
    data = config(route(resume={"buffer_bytes": 1}, limits={"max_event_bytes": "4KiB"}))
    assert from_mapping(data).routes[0].resume.buffer_bytes == 1


def test_unparsable_upstream_message_names_the_url() -> None:
    assert error_of(config(route(upstream="http://127.0.0.1:99999"))).startswith(
        "routes[0].upstream: not a valid URL 'http://127.0.0.1:99999': "
    )


def test_a_websocket_profile_error_names_the_route_key() -> None:
    data = config(route(upstream="ws://127.0.0.1:9000/gw", websocket={"request_id": "nowhere"}))
    assert error_of(data) == (
        "routes[0].websocket.request_id: path 'nowhere' is not in the request template"
    )


@pytest.mark.parametrize(
    ("first", "second"), [("/v1/chat", "/v1/chat/"), ("/v1/chat/", "/v1/chat"), ("/x//", "/x")]
)
def test_paths_equal_but_for_a_trailing_slash_collide(first: str, second: str) -> None:
    data = config(route(path=first), route(name="other", path=second))
    assert error_of(data) == (f"routes[1].path: must start with / and be unique, got {second!r}")


def test_only_slashes_are_trimmed_when_paths_are_compared() -> None:
    # Paths that differ in a last character other than "/" are distinct, in either order.
    for paths in (["/tX", "/t", "/t "], ["/t", "/tX", "/t "]):
        routes = [route(name=f"r{i}", path=p) for i, p in enumerate(paths)]
        assert [r.path for r in from_mapping(config(*routes, probe_path="/tXX")).routes] == paths
    assert from_mapping(config(route(path="/p"), probe_path="/pX")).probe_path == "/pX"
    assert error_of(config(route(path="/v1/chat/"), probe_path="/v1/chat")) == (
        "probe_path: must start with / and differ from every route path, got '/v1/chat'"
    )
