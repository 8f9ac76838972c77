"""Environment overrides of the configuration: ``SSE_SIDECAR_A__B__C=value``.

Pure: plain data in, plain data out, before the typed loader
(sidecar/config.py) checks every key.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any

from sidecar.errors import ConfigError
from sidecar.typedconf import EnvValue

ENV_PREFIX = "SSE_SIDECAR_"


def apply_env(
    data: dict[str, Any], environ: Mapping[str, str], top_level: Collection[str]
) -> dict[str, Any]:
    """Merge ``SSE_SIDECAR_A__B__C=value`` into ``data['a']['b']['c']``.

    ``__`` separates levels (keys themselves contain ``_``); a route is named
    by its ``name`` or its index: ``SSE_SIDECAR_ROUTES__CHAT__UPSTREAM``.
    Values stay text for text keys and are read as YAML elsewhere, so
    ``8081``, ``true``, ``15s`` and ``[done, final]`` work.

    Variables whose first part is not one of ``top_level`` (the config's
    keys) are ignored: Kubernetes
    injects ``SSE_SIDECAR_PORT``, ``SSE_SIDECAR_SERVICE_HOST``… for a Service
    named sse-sidecar, and those must not stop the sidecar from starting.
    """
    for var in sorted(environ):
        if not var.startswith(ENV_PREFIX) or var == ENV_PREFIX + "CONFIG":
            continue
        path = [p.lower() for p in var[len(ENV_PREFIX) :].split("__")]
        if path[0] not in top_level:
            continue
        value = EnvValue(environ[var])
        node: Any = data
        for i, part in enumerate(path[:-1]):
            if isinstance(node, list):
                node = _route_by_name_or_index(node, part, var)
            else:
                child = node.get(part)
                if child is None:
                    child = [] if part == "routes" and i == 0 else {}
                    node[part] = child
                node = child
            if not isinstance(node, dict | list):
                raise ConfigError(f"{var}: does not name a configuration key")
        if not isinstance(node, dict):
            raise ConfigError(f"{var}: does not name a configuration key")
        node[path[-1]] = value
    return data


def _route_by_name_or_index(routes: list[Any], part: str, var: str) -> Any:
    for route in routes:
        if isinstance(route, dict) and str(route.get("name", "")).lower() == part:
            return route
    if part.isdigit() and int(part) < len(routes):
        return routes[int(part)]
    raise ConfigError(f"{var}: no route named or numbered {part!r}")
