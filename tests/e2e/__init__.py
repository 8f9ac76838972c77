"""End-to-end tests: a real browser (and nginx) in front of a real sidecar."""
