"""The drive-vlm command line."""
