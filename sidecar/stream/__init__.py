"""One stream: Source → decoder → normaliser → Sink, paced, with its state and stats.

run.py drives it (claim, open, commit or pass through, pump, end); source.py
opens the upstream; pump.py is the awaiting loop and splice.py the callback
fast path of the same contract; sink.py is the one client write path;
pacing.py (pure) decides deadlines, limits and heartbeats; state.py holds a
stream's numbers and writes its ``stream_end`` line.
"""
