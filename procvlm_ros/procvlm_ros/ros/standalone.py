"""Entry point shared by the camera nodes: init, spin the node's timers, clean shutdown."""

from __future__ import annotations

from collections.abc import Callable
import sys

import rclpy
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.node import Node

from procvlm_ros.core.errors import ProcVlmError


def spin_node(make_node: Callable[[], Node], name: str, args: list[str] | None = None) -> int:
    """
    Init rclpy, build the node and spin it until Ctrl-C, SIGTERM or its ``finished`` future.

    Spinning (not a loop of sleeps) is what lets the node's parameter services answer
    (``ros2 param get/list``) while its timers publish. A node with a ``finished`` future
    (``rclpy.task.Future``) ends the process when it completes the future.

    :param name: Logger name for a refused start (bad parameter, missing file).
    :returns: 0 after a normal end or a signal; 2 when the node refused to start; 1 when it
        failed while running.
    """
    rclpy.init(args=args if args is not None else sys.argv)
    executor = SingleThreadedExecutor()
    node = None
    try:
        try:
            node = make_node()
        except (ValueError, OSError, ProcVlmError) as e:
            rclpy.logging.get_logger(name).error(f'cannot start: {e}')
            return 2
        executor.add_node(node)
        finished = getattr(node, 'finished', None)
        if finished is None:
            executor.spin()
        else:
            executor.spin_until_future_complete(finished)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass  # Ctrl-C or SIGTERM: rclpy shut the context down; exit cleanly
    except Exception as e:
        if not rclpy.ok():  # a signal shut rclpy down mid-callback (e.g. publish failed)
            return 0
        if not isinstance(e, ProcVlmError):
            raise
        rclpy.logging.get_logger(name).error(str(e))  # e.g. a video that stops decoding
        return 1
    finally:
        executor.shutdown()
        if node is not None:
            node.destroy_node()
        rclpy.try_shutdown()
    return 0
