"""
Convert published driving VLMs (DriveMM, DriveLMM-o1, Impromptu-VLA) to HF-native checkpoints.

``runner.convert_checkpoint`` is the entry point; this package file imports nothing heavy, so
the CLI can list the kinds without loading torch.
"""
