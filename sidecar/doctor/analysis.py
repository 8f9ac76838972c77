"""The doctor's judgement: a pure function from what arrived, and when, to a report.

Each topic has its own module: timing (buffering, constant delay), cut (idle
cut or age cap, heartbeat), chain (headers, framing, comments, HTTP/2); hops
names the proxy a finding is about. This module only puts them together.
"""

from __future__ import annotations

from collections.abc import Sequence

from sidecar.doctor import chain, cut, timing
from sidecar.doctor.hops import advice
from sidecar.doctor.model import (
    PROBE_PATH,
    DoctorError,
    Finding,
    Observation,
    Report,
    Tick,
    header,
)

__all__ = ["PROBE_PATH", "DoctorError", "Finding", "Observation", "Report", "Tick", "analyse"]


def analyse(obs: Observation, again: Sequence[Observation] = ()) -> Report:
    """Judge ``obs``; ``again``: further probes of the same chain with other bursts (cut tests)."""
    buffered, delay, buffering, delayed = timing.buffering(obs)
    compressed, compression = _compression(obs)
    found = cut.classify([obs, *again])
    silence = cut.silence(obs, found)
    heartbeat_ok, heartbeat = cut.heartbeat(obs, found)
    return Report(
        buffered=buffered,
        compressed=compressed,
        cut_after=found.seconds if found is not None and found.kind in ("idle", "unsure") else None,
        heartbeat=obs.heartbeat,
        heartbeat_ok=heartbeat_ok,
        age_cap=found.seconds if found is not None and found.kind == "age" else None,
        delay=delay,
        findings=(
            buffering,
            delayed,
            compression,
            silence,
            heartbeat,
            chain.framing(obs),
            chain.comments(obs),
            chain.http2(obs),
            chain.headers(obs),
        ),
    )


def _compression(obs: Observation) -> tuple[bool, Finding]:
    encoding = header(obs.headers, "Content-Encoding")
    if encoding and encoding.strip().lower() != "identity":
        said = f"Content-Encoding: {encoding}"
    elif obs.gzip_magic:
        said = "the body is gzip (bytes 1f 8b) though no Content-Encoding header says so"
    else:
        return False, Finding("compression", "ok", "not compressed")
    untimed = "" if obs.decodable else "; doctor cannot decode it, so events were not timed"
    text = (
        f"compressed: {said}. The sidecar never compresses, so the chain does; a compressor "
        "holds events until its block fills unless it flushes each one. Turn compression "
        f"off for text/event-stream: {advice(obs.headers, 'compression')}{untimed}"
    )
    return True, Finding("compression", "problem", text)
