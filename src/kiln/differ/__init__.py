"""Overlay upper dir → compressed, digested OCI layer blob
(:func:`kiln.differ.layer.write_layer`)."""
