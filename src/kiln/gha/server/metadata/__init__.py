"""Metadata stores of the cache server: SQLite (default) and PostgreSQL."""
