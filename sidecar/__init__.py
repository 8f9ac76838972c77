"""sse-sidecar: a reverse proxy that hands clients a Server-Sent Events stream they can rely on."""

__version__ = "0.1.0"
