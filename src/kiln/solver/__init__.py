"""kiln.solver."""
