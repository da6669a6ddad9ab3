"""drive_vlm_pruned: a multi-view driving VLM with visual-token pruning, as a ROS 2 package."""

__version__ = '0.1.0'

from .library_logs import install as _install_log_filters

_install_log_filters()
