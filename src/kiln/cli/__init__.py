"""The command line: argument parsing, progress display, the one top-level error handler."""
