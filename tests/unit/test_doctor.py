"""doctor's analysis on synthetic timings: buffering, compression, cut-off, heartbeat, exit codes.

Client times count from the request; the probe's server clock starts at
T0 (time.time() of a run), so tick ``sent`` values look like the real ones.
"""

from __future__ import annotations

import re
import socket
from dataclasses import replace

import pytest

from sidecar.doctor import (
    PROBE_PATH,
    DoctorError,
    Observation,
    Options,
    Report,
    Tick,
    analyse,
    main,
    probe_url,
)
from sidecar.doctor.cut import needs_second_run, second_burst

T0 = 1_795_000_000.0
STREAM_HEADERS = {
    "Content-Type": "text/event-stream; charset=utf-8",
    "Cache-Control": "no-cache, no-transform",
}


def ticks(arrivals: list[float], interval: float = 0.25) -> tuple[Tick, ...]:
    """Ticks sent ``interval`` apart from T0, arriving at ``arrivals``."""
    return tuple(Tick(n, T0 + n * interval, at) for n, at in enumerate(arrivals))


def flowing(count: int = 20, interval: float = 0.25, latency: float = 0.004) -> tuple[Tick, ...]:
    # A few ms of jitter, as on a real network.
    return ticks([n * interval + latency + (n % 3) * 0.002 for n in range(count)], interval)


def observe(
    tick_list: tuple[Tick, ...],
    *,
    end: str = "probe_end",
    ended_at: float | None = None,
    headers: dict[str, str] | None = None,
    silence: float = 6.0,
    heartbeat: float | None = 15.0,
    events: int | None = None,
    **kwargs: object,
) -> Observation:
    last = max((t.sent - T0 for t in tick_list), default=0.0)
    return Observation(
        ticks=tick_list,
        headers=STREAM_HEADERS if headers is None else headers,
        ended_at=last + silence + 0.01 if ended_at is None else ended_at,
        end=end,  # type: ignore[arg-type]
        events=len(tick_list) if events is None else events,
        silence=silence,
        heartbeat=heartbeat,
        server_start=T0,
        **kwargs,  # type: ignore[arg-type]
    )


def finding(report: Report, topic: str) -> tuple[str, str]:
    (found,) = [f for f in report.findings if f.topic == topic]
    return found.verdict, found.text


# --- buffering ---------------------------------------------------------------------------------


def test_events_arriving_as_sent_are_not_buffered() -> None:
    report = analyse(observe(flowing(), heartbeat=2.0))
    assert report.buffered is False
    verdict, text = finding(report, "buffering")
    assert verdict == "ok"
    assert re.match(r"not buffered: events arrived 25\d ms apart as sent", text)
    assert report.exit_code == 0
    assert report.render("http://x/p").endswith("result: no problem found")


def test_everything_held_until_the_end_is_buffered() -> None:
    # Sent 250 ms apart over 4.75 s, delivered together at 4.8 s.
    report = analyse(observe(ticks([4.8 + n * 0.0005 for n in range(20)]), head_at=0.001))
    assert report.buffered is True
    verdict, text = finding(report, "buffering")
    assert verdict == "problem"
    # Measured from the response head: the last, sent at 4.75 s, was 50 ms late; the tolerance
    # is half the send interval.
    assert "19 of 20 events arrived late (308 ms to 4.8 s, after the response head)" in text
    assert "20 within 10 ms after 4.8 s" in text
    assert "sent 250 ms apart" in text
    assert "proxy_buffering off" in text
    assert report.exit_code == 1
    assert "result: 1 problem(s) found (buffering)" in report.render("http://x/p")


def test_events_released_whenever_a_buffer_fills_are_buffered() -> None:
    # A 4-event buffer: each batch goes out when its last event is written.
    arrivals = [((n // 4) * 4 + 3) * 0.25 + 0.003 for n in range(20)]
    report = analyse(observe(ticks(arrivals)))
    assert report.buffered is True
    assert "4 within" in finding(report, "buffering")[1]


def test_one_late_packet_is_not_buffering() -> None:
    # A TCP retransmission: one event 300 ms late, arriving with the next one.
    arrivals = [n * 0.25 + 0.004 for n in range(20)]
    arrivals[7] += 0.25
    report = analyse(observe(ticks(arrivals)))
    assert report.buffered is False


def test_clock_skew_between_client_and_server_does_not_matter() -> None:
    skewed = tuple(Tick(t.n, t.sent - 3600.0, t.arrived) for t in flowing())
    obs = observe(skewed)
    report = analyse(replace(obs, server_start=T0 - 3600.0))
    assert report.buffered is False
    assert report.cut_after is None


def test_a_stream_where_nothing_arrived_is_buffered() -> None:
    report = analyse(observe((), end="closed", ended_at=3.0, events=20))
    assert report.buffered is True
    assert finding(report, "buffering")[1].startswith("buffered: not one event arrived in 3.0 s")
    assert report.cut_after is None
    assert finding(report, "silence")[1].startswith("closed after 3.0 s before any event arrived")
    assert finding(report, "heartbeat")[0] == "note"


def test_one_event_is_too_few_to_judge() -> None:
    report = analyse(observe(ticks([0.01])))
    assert report.buffered is None
    assert finding(report, "buffering")[0] == "note"


# --- compression -------------------------------------------------------------------------------


def test_content_encoding_is_compression() -> None:
    headers = {**STREAM_HEADERS, "Content-Encoding": "gzip"}
    report = analyse(observe(flowing(), headers=headers, heartbeat=2.0))
    assert report.compressed is True
    verdict, text = finding(report, "compression")
    assert verdict == "problem"
    assert text.startswith("compressed: Content-Encoding: gzip.")
    assert "gzip_types" in text
    assert report.exit_code == 1


def test_gzip_bytes_without_a_header_are_compression() -> None:
    report = analyse(observe(flowing(), gzip_magic=True))
    assert report.compressed is True
    assert "1f 8b" in finding(report, "compression")[1]


def test_undecodable_encoding_is_compression_and_leaves_buffering_open() -> None:
    headers = {**STREAM_HEADERS, "content-encoding": "br"}
    report = analyse(observe((), headers=headers, decodable=False))
    assert report.compressed is True
    assert report.buffered is None
    assert "cannot decode" in finding(report, "compression")[1]


def test_identity_is_not_compression() -> None:
    headers = {**STREAM_HEADERS, "Content-Encoding": "identity"}
    report = analyse(observe(flowing(), headers=headers))
    assert report.compressed is False
    assert finding(report, "compression") == ("ok", "not compressed")


# --- silence cut-off and heartbeat -------------------------------------------------------------


def cut_after_two_seconds(heartbeat: float | None) -> Report:
    burst = flowing(count=8, interval=0.5)
    # The last tick left the server 3.5 s after the probe began; cut 2 s later.
    return analyse(observe(burst, end="closed", ended_at=3.5 + 2.0 + 0.006, heartbeat=heartbeat))


def test_cut_off_is_measured_from_the_last_data() -> None:
    report = cut_after_two_seconds(15.0)
    assert report.cut_after == pytest.approx(2.0, abs=0.01)
    verdict, text = finding(report, "silence")
    assert verdict == "note"
    assert "closed the stream after 2.0 s without data" in text


def test_long_heartbeat_for_a_chain_that_cuts_is_a_problem() -> None:
    report = cut_after_two_seconds(15.0)
    assert report.heartbeat_ok is False
    verdict, text = finding(report, "heartbeat")
    assert verdict == "problem"
    assert text.startswith("15 s is too long: this chain cuts silent streams after 2.0 s")
    assert "heartbeat.interval to 1s or less" in text
    assert report.exit_code == 1


def test_short_heartbeat_for_a_chain_that_cuts_is_fine() -> None:
    report = cut_after_two_seconds(1.0)
    assert report.heartbeat_ok is True
    assert finding(report, "heartbeat") == (
        "ok",
        "1 s is short enough for this chain (at most half its 2.0 s cut-off)",
    )
    assert report.exit_code == 0


def test_heartbeat_off_for_a_chain_that_cuts_is_a_problem() -> None:
    report = cut_after_two_seconds(0.0)
    assert report.heartbeat_ok is False
    assert finding(report, "heartbeat")[1].startswith("off: this chain cuts")


def test_unknown_heartbeat_gets_advice_only() -> None:
    report = cut_after_two_seconds(None)
    assert report.heartbeat_ok is None
    assert finding(report, "heartbeat") == (
        "note",
        "interval unknown (pass --heartbeat); it must be 1 s or less here",
    )
    assert report.exit_code == 0


def test_cut_off_comes_from_server_times_when_events_arrive_late() -> None:
    # Buffered: all 8 ticks arrive at the cut, yet the silence began at 3.5 s.
    held = ticks([5.5 + n * 0.0001 for n in range(8)], interval=0.5)
    report = analyse(observe(held, end="closed", ended_at=5.51))
    assert report.buffered is True
    assert report.cut_after == pytest.approx(2.0, abs=0.02)


def test_kept_open_for_the_whole_test() -> None:
    report = analyse(observe(flowing(), silence=6.0, heartbeat=2.0))
    assert report.cut_after is None
    assert finding(report, "silence") == ("ok", "kept open for the whole 6 s test of silence")
    assert finding(report, "heartbeat") == (
        "ok",
        "2 s is short enough: the chain kept 6 s of silence",
    )


def test_a_test_shorter_than_twice_the_heartbeat_cannot_judge_it() -> None:
    report = analyse(observe(flowing(), silence=6.0, heartbeat=15.0))
    assert report.heartbeat_ok is None
    verdict, text = finding(report, "heartbeat")
    assert verdict == "note"
    assert "--max-silence 35" in text
    assert report.exit_code == 0


def test_doctor_timeout_before_the_test_ends_could_not_test() -> None:
    report = analyse(observe(flowing(), end="timeout", ended_at=8.05, heartbeat=2.0))
    assert report.cut_after is None
    verdict, text = finding(report, "silence")
    assert verdict == "untested"
    assert text.startswith("could not test: doctor stopped waiting after 8.1 s (--timeout), 3.3 s")
    verdict, text = finding(report, "heartbeat")
    assert "no silence was measured" not in text
    assert "after 3.3 s of silence" in text
    assert report.exit_code == 2
    assert report.render("http://x/p").endswith("result: could not test (silence)")


# --- headers -----------------------------------------------------------------------------------


def test_headers_note_what_the_chain_changed() -> None:
    headers = {
        "content-type": "text/event-stream; charset=utf-8",
        "Cache-Control": "no-cache",
        "Via": "1.1 lb",
    }
    verdict, text = finding(analyse(observe(flowing(), headers=headers)), "headers")
    assert verdict == "note"
    assert "Cache-Control: no-cache (the sidecar sent 'no-cache, no-transform')" in text
    assert "X-Accel-Buffering absent (nginx acts on it and removes it)" in text
    assert "Via: 1.1 lb" in text
    assert "front: does not name itself" in text


def test_headers_as_sent_by_the_sidecar() -> None:
    headers = {**STREAM_HEADERS, "X-Accel-Buffering": "no"}
    text = finding(analyse(observe(flowing(), headers=headers)), "headers")[1]
    assert text == (
        "Content-Type: text/event-stream; charset=utf-8; "
        "Cache-Control: no-cache, no-transform; X-Accel-Buffering: no; "
        "front: does not name itself"
    )


# --- URL and command line ----------------------------------------------------------------------


def test_probe_url_defaults_the_path_and_adds_parameters() -> None:
    opts = Options(events=5, interval=0.5, max_silence=6.0)
    url = probe_url("http://front.example", opts)
    assert url.path == PROBE_PATH
    assert dict(url.query) == {"events": "5", "interval": "0.5", "silence": "6"}
    kept = probe_url("https://front.example/sse/_sse-sidecar/probe?token=t", Options(size=100))
    assert kept.path == "/sse/_sse-sidecar/probe"
    assert kept.query["token"] == "t"
    assert kept.query["size"] == "100"


@pytest.mark.parametrize("url", ["ftp://x/", "not a url", "http://"])
def test_probe_url_refuses_what_is_not_http(url: str) -> None:
    with pytest.raises(DoctorError):
        probe_url(url, Options())


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["http://x", "--events", "1"],
        ["http://x", "--interval", "soon"],
        ["http://x", "--max-silence", "601"],
        ["http://x", "--heartbeat", "-1"],
        ["http://x", "--cacert", "/nonexistent/ca.pem"],
    ],
)
def test_usage_errors_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "usage: sse-sidecar doctor" in err
    assert "Traceback" not in err


def test_bad_url_exits_2_with_a_message(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["ftp://front.example/"]) == 2
    assert (
        capsys.readouterr().err
        == "sse-sidecar doctor: not an http(s) URL: 'ftp://front.example/'\n"
    )


def test_connection_refused_exits_2_with_a_message(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound, never listening: connections are refused
        assert main([f"http://127.0.0.1:{port}/"]) == 2
    err = capsys.readouterr().err
    assert f"sse-sidecar doctor: cannot connect to 127.0.0.1:{port}" in err
    assert "Traceback" not in err


# --- lateness measured from the head and from the probe's send stamps --------------------------


def agreeing(obs: Observation, *, info_at: float = 0.002) -> Observation:
    """The client's clock agrees with the server's: the request went out 1 ms before T0."""
    return replace(obs, request_wall=T0 - 0.001, info_at=info_at, head_at=0.001)


def test_a_held_response_reports_every_event_late_by_the_send_stamps() -> None:
    # The whole response is held until the probe ends: 5 s of silence after the last tick.
    held = ticks([9.76 + n * 0.0001 for n in range(20)])
    obs = agreeing(observe(held, silence=5.0, ended_at=9.77), info_at=9.76)
    report = analyse(obs)
    verdict, text = finding(report, "buffering")
    assert verdict == "problem"
    assert "20 of 20 events arrived late (5.0 s to 9.8 s, by the probe's send stamps)" in text


def test_a_constant_delay_on_every_event_is_reported() -> None:
    # HAProxy with default settings: every event ~205 ms late, evenly.
    late = ticks([n * 0.25 + 0.205 + (n % 2) * 0.003 for n in range(20)])
    report = analyse(agreeing(observe(late, heartbeat=2.0)))
    assert report.buffered is False
    assert report.delay == pytest.approx(0.205, abs=0.003)
    verdict, text = finding(report, "delay")
    assert verdict == "problem"
    assert text.startswith("every event arrived at least 204 ms late (up to 207 ms, by the probe")
    assert "Nagle-style delay" in text
    assert "compressor that keeps one event back" in text
    assert "option http-no-delay" in text
    assert report.exit_code == 1


def test_a_constant_delay_shows_against_the_head_when_clocks_differ() -> None:
    late = ticks([n * 0.25 + 0.21 for n in range(20)])
    skewed = tuple(Tick(t.n, t.sent + 40.0, t.arrived) for t in late)
    obs = replace(observe(skewed), server_start=T0 + 40.0, request_wall=T0, info_at=0.21)
    obs = replace(obs, head_at=0.002)
    verdict, text = finding(analyse(obs), "delay")
    assert verdict == "problem"
    assert "208 ms late" in text
    assert "after the response head" in text


def test_events_on_time_have_no_delay() -> None:
    verdict, text = finding(analyse(agreeing(observe(flowing()))), "delay")
    assert verdict == "ok"
    assert text.startswith("none: every event arrived within")


def test_delay_without_a_zero_cannot_be_told() -> None:
    obs = replace(observe(flowing()), server_start=None)
    assert finding(analyse(obs), "delay")[0] == "note"


# --- age cap or idle cut -----------------------------------------------------------------------


def closed(
    burst: tuple[Tick, ...], at: float, events: int | None = None, interval: float = 0.25
) -> Observation:
    obs = observe(burst, end="closed", ended_at=at, events=events, heartbeat=15.0)
    return replace(obs, interval=interval)


def test_a_cut_while_events_still_flow_is_an_age_cap() -> None:
    # 40 events 250 ms apart; an 8 s cap closes the stream after 33 of them.
    obs = closed(flowing(count=33), 8.0, events=40)
    report = analyse(obs)
    assert report.age_cap == pytest.approx(8.0)
    assert report.cut_after is None
    verdict, text = finding(report, "silence")
    assert verdict == "problem"
    assert text.startswith("age cap: the chain closes a stream about 8.0 s after it opened")
    assert "while events were still arriving" in text
    assert "resume.enabled: true" in text
    assert "stream.retry" in text
    verdict, text = finding(report, "heartbeat")
    assert verdict == "note"
    assert text.startswith("cannot help")
    assert "heartbeat.interval" not in report.render("http://x/p")
    assert report.exit_code == 1


def test_two_bursts_cut_at_the_same_age_are_an_age_cap() -> None:
    long_burst = closed(flowing(count=20), 8.0)  # silence began at 4.75 s: 3.25 s of it
    short_burst = closed(flowing(count=10), 8.0)  # began at 2.25 s: 5.75 s of it
    report = analyse(long_burst, [short_burst])
    assert report.age_cap == pytest.approx(8.0)
    assert "cut at the same age" in finding(report, "silence")[1]
    assert finding(report, "heartbeat")[0] == "note"


def test_two_bursts_cut_after_the_same_silence_are_an_idle_cut() -> None:
    long_burst = closed(flowing(count=20), 4.75 + 2.0)
    short_burst = closed(flowing(count=10), 2.25 + 2.0)
    report = analyse(long_burst, [short_burst])
    assert report.age_cap is None
    assert report.cut_after == pytest.approx(2.0, abs=0.01)
    verdict, text = finding(report, "silence")
    assert "(an idle cut: a second probe" in text
    verdict, text = finding(report, "heartbeat")
    assert verdict == "problem"
    assert "heartbeat.interval to 1s or less" in text


def test_one_run_cut_in_the_silence_names_both_readings() -> None:
    report = analyse(closed(flowing(count=20), 4.75 + 3.3))
    text = finding(report, "silence")[1]
    assert "after 3.3 s without data (an idle cut, or an age cap of 8.1 s" in text


def test_less_silence_than_the_stream_survived_is_an_age_cap() -> None:
    # Events 1 s apart went through, then a cut 0.4 s into the silence.
    burst = flowing(count=5, interval=1.0)
    report = analyse(closed(burst, 4.0 + 0.4, interval=1.0))
    assert report.age_cap == pytest.approx(4.4)


def test_a_heartbeat_is_never_advised_below_the_burst_interval() -> None:
    burst = flowing(count=20, interval=0.25)
    long_burst = closed(burst, 4.75 + 0.4)
    short_burst = closed(flowing(count=10), 2.25 + 0.4)
    text = finding(analyse(long_burst, [short_burst]), "heartbeat")[1]
    assert "heartbeat.interval to 0.25s or less (the gap between events it already kept)" in text


def test_a_cut_after_the_first_event_is_a_problem_either_way() -> None:
    report = analyse(closed(ticks([0.003]), 0.1, events=20))
    verdict, text = finding(report, "silence")
    assert verdict == "problem"
    assert "shorter --interval" in text


# --- framing, comments, HTTP/2, the hop ---------------------------------------------------------


def test_a_content_length_from_the_front_is_a_problem() -> None:
    headers = {**STREAM_HEADERS, "Content-Length": "1234", "Server": "nginx/1.22.1"}
    verdict, text = finding(analyse(observe(flowing(), headers=headers)), "framing")
    assert verdict == "problem"
    assert text.startswith("Content-Length: 1234 added by the chain")
    assert "nginx (Server: nginx/1.22.1): proxy_buffering off" in text


def test_connection_close_is_judged() -> None:
    headers = {**STREAM_HEADERS, "Connection": "close"}
    verdict, text = finding(analyse(observe(flowing(), headers=headers)), "framing")
    assert verdict == "note"
    assert "every reconnect opens a new connection" in text
    chunked = {**STREAM_HEADERS, "Transfer-Encoding": "chunked"}
    assert finding(analyse(observe(flowing(), headers=chunked)), "framing")[0] == "ok"


def test_a_stripped_comment_is_a_problem() -> None:
    report = analyse(observe(flowing(), comment_sent=True, comment_seen=False))
    verdict, text = finding(report, "comments")
    assert verdict == "problem"
    assert "comments: pass" in text
    seen = analyse(observe(flowing(), comment_sent=True, comment_seen=True))
    assert finding(seen, "comments")[0] == "ok"
    assert finding(analyse(observe(flowing())), "comments")[0] == "note"


@pytest.mark.parametrize(
    ("tls", "offered", "verdict", "words"),
    [
        (True, "h2", "ok", "offered (ALPN h2)"),
        (True, "http/1.1", "note", "at most 6 HTTP/1.1 connections per origin"),
        (False, "http/1.1", "note", "plain http (the front refuses an h2c upgrade"),
        (False, "h2c", "note", "accepts an h2c upgrade, which browsers never use"),
        (False, None, "note", "not checked"),
    ],
)
def test_http2_is_reported(tls: bool, offered: str | None, verdict: str, words: str) -> None:
    report = analyse(observe(flowing(), tls=tls, http2=offered))
    found = finding(report, "http2")
    assert found[0] == verdict
    assert words in found[1]


@pytest.mark.parametrize(
    ("headers", "words"),
    [
        ({"Server": "nginx/1.22.1"}, "nginx (Server: nginx/1.22.1): tcp_nodelay on"),
        ({"Server": "Caddy"}, "Caddy (Server: Caddy): reverse_proxy { flush_interval -1 }"),
        ({"Via": "1.1 Caddy"}, "Caddy (Via: 1.1 Caddy)"),
        ({"Server": "Python/3.11 aiohttp/3.9"}, "HAProxy: option http-no-delay; nginx:"),
    ],
)
def test_findings_name_the_hop_and_its_setting(headers: dict[str, str], words: str) -> None:
    late = ticks([n * 0.25 + 0.2 for n in range(20)])
    obs = agreeing(observe(late, headers={**STREAM_HEADERS, **headers}))
    assert words in finding(analyse(obs), "delay")[1]


def test_the_sidecars_own_server_header_says_the_front_passed_it_on() -> None:
    headers = {**STREAM_HEADERS, "Server": "Python/3.11 aiohttp/3.9"}
    text = finding(analyse(observe(flowing(), headers=headers)), "headers")[1]
    assert "passed the sidecar's Server header on (HAProxy does" in text


@pytest.mark.parametrize(
    ("events", "interval", "again"),
    [(20, 0.25, (10, 0.25)), (5, 0.25, (9, 0.25)), (4, 0.5, (2, 0.5)), (2, 0.01, (102, 0.01))],
)
def test_the_second_burst_differs_by_about_a_second(
    events: int, interval: float, again: tuple[int, float]
) -> None:
    assert second_burst(events, interval) == again
    assert abs(again[0] - events) * interval >= 1.0 - 1e-9


def test_only_a_cut_in_the_silence_needs_a_second_probe() -> None:
    assert needs_second_run(closed(flowing(count=20), 4.75 + 2.0))
    assert not needs_second_run(closed(flowing(count=10), 2.0, events=20))
    assert not needs_second_run(observe(flowing()))
