"""Cache mounts that travel: local directories, their restore from and export to caches."""
