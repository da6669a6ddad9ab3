"""DriveLM-format driving QA: the synthetic data writer and the reader of real DriveLM files."""
