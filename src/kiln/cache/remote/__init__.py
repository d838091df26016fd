"""Remote build caches (``--cache-from`` / ``--cache-to``): the plug-in interface, the shared
BuildKit format, and one module per backend."""
