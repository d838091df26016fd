"""The remote cache backends, one module per ``type=``; registered in
:func:`kiln.build.cache_backends` (the core never imports them)."""
