"""Outputs (``--output type=...``): image assembly, one exporter module per type, the
metadata file."""
