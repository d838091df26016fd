"""Unpacked layers (shared by every build) and the overlayfs mounts a step runs on."""
