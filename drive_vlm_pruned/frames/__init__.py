"""From camera messages to CameraSets: synchronisation, image decoding, frame assembly (no ROS)."""
