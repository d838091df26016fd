"""Byte storage of the cache server: entries and in-flight uploads."""
