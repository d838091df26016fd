"""The output types of ``--output``, one module per ``type=``; registered in
:func:`kiln.build.exporters` (the core never imports them)."""
