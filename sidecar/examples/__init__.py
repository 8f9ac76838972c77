"""Runnable examples that show what sse-sidecar does (start with ``producer``)."""
