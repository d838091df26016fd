"""kiln.gha."""
