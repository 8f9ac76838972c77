"""``sse-sidecar doctor URL``: what the chain in front of the sidecar does to a stream.

Strategy: read the sidecar's probe stream (sidecar/probe.py) through the
user's real front chain, note when each event arrives, and hand that
:class:`Observation` to :func:`analyse`, a pure function that says in plain
words whether the chain buffers, compresses, how long it keeps a silent stream
open, and whether the heartbeat interval is short enough for it. Only
:func:`observe` does I/O.
"""

from sidecar.doctor.analysis import analyse
from sidecar.doctor.cli import main
from sidecar.doctor.model import (
    PROBE_PATH,
    DoctorError,
    Finding,
    Observation,
    Report,
    Tick,
)
from sidecar.doctor.observe import Options, observe, probe_url

__all__ = [
    "PROBE_PATH",
    "DoctorError",
    "Finding",
    "Observation",
    "Options",
    "Report",
    "Tick",
    "analyse",
    "main",
    "observe",
    "probe_url",
]
