"""kiln.cache."""
