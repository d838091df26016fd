"""kiln.differ."""
