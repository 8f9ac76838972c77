"""Side-by-side benchmark: the same SSE load direct, through nginx and through the sidecar.

``python -m bench.run`` is the one command; see BENCHMARKS.md. The producer
and the load client are separate processes so they never share an event loop
(or a CPU budget) with the proxy being measured.
"""
