"""The archive formats every layer goes through: tar streams, compression, whiteouts (a leaf)."""
