"""kiln.snapshot."""
