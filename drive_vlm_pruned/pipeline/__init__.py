"""The frame pipeline: CameraSet -> vision -> budgets -> pruner -> LLM -> Result (no ROS)."""
