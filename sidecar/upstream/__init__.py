"""Upstream sources: open a request to a configured producer and read its bytes."""
