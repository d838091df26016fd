"""kiln.executor."""
