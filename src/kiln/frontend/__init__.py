"""Dockerfile → build plan: parsing, ARG/ENV expansion, stages, one handler per instruction."""
