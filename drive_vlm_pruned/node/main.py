"""``ros2 run drive_vlm_pruned vlm_node`` (and ``drive-vlm node``): start the node and spin."""

from __future__ import annotations

from collections.abc import Sequence
import sys

import rclpy
from rclpy.exceptions import InvalidParameterTypeException, ParameterException
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor

from .vlm_node import VlmNode


def main(args: Sequence[str] | None = None) -> int:
    """
    Spin the node until Ctrl-C, a shutdown, or a failed model load (exit status 1).

    A bad model path or parameter fails before anything starts, with the reason on stderr.
    """
    rclpy.init(args=args)
    try:
        node = VlmNode()
    except (ValueError, ParameterException) as err:
        hint = (' (ROS parameter types are strict: write 1.0 for a double, and [1.0, 0.5] for '
                'a double array)' if isinstance(err, InvalidParameterTypeException) else '')
        print(f'drive_vlm: cannot start: {err}{hint}', file=sys.stderr)
        rclpy.try_shutdown()
        return 1
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    try:
        while rclpy.ok() and node.fatal is None:
            executor.spin_once(timeout_sec=0.2)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        executor.shutdown()
        node.destroy_node()
        rclpy.try_shutdown()
    if node.fatal:
        print(f'drive_vlm: {node.fatal}', file=sys.stderr)
        return 1
    return 0


if __name__ == '__main__':
    sys.exit(main())
