"""kiln.exporter."""
