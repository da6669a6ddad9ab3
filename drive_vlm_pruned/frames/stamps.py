"""
ROS time stamps as integer nanoseconds, and back, for duck-typed messages (no ROS import).

A ``builtin_interfaces/Time`` holds ``sec`` and ``nanosec``; the synchronizer, the pipeline and
every record keep one ``int`` of nanoseconds instead, so two stamps compare exactly.
"""

from __future__ import annotations

NS_PER_S = 1_000_000_000


def header_stamp_ns(msg) -> int:
    """Return ``msg.header.stamp`` in nanoseconds (any message with a std_msgs Header)."""
    stamp = msg.header.stamp
    return stamp.sec * NS_PER_S + stamp.nanosec


def stamp_fields(stamp_ns: int) -> dict[str, int]:
    """Return ``{'sec', 'nanosec'}`` of ``stamp_ns``: a Time's fields, as result JSON has them."""
    return {'sec': stamp_ns // NS_PER_S, 'nanosec': stamp_ns % NS_PER_S}
