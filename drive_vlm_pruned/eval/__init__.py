"""Scoring: DriveLM metrics, planning metrics, baselines and the eval loop over the Pipeline."""
