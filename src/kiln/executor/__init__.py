"""Running one step in a container: the :class:`~kiln.executor.base.Executor` protocol and
its runc implementation (a leaf: imports nothing of the pipeline)."""
