"""Calls an external human-in-the-loop manager's service without ever blocking the node."""

from __future__ import annotations

import time
from typing import Any

from rclpy.node import Node
from std_srvs.srv import SetBool, Trigger

SERVICE_TYPES = {'trigger': Trigger, 'set_bool': SetBool}


class HilServiceCaller:
    """
    Fire-and-forget service calls on intervention events.

    Trigger services are called when an intervention is raised; SetBool services get
    ``data=True`` on raise and ``data=False`` on clear. A missing service is reported (at most
    every ``warn_period_s``); at most one call is in flight, a newer event replaces a pending one
    only after ``timeout_s``.
    """

    def __init__(self, node: Node, name: str, kind: str, timeout_s: float = 5.0,
                 callback_group: Any = None, warn_period_s: float = 10.0) -> None:
        self._node = node
        self._kind = kind
        self._client = node.create_client(SERVICE_TYPES[kind], name,
                                          callback_group=callback_group)
        self._timeout_s = timeout_s
        self._warn_period_s = warn_period_s
        self._last_warn = -1e9
        self._pending: tuple[Any, float] | None = None
        self.calls = 0
        self.last_result = ''

    def notify(self, active: bool, message: str) -> bool:
        """Send one request for an event; return whether a call was made."""
        if self._kind == 'trigger' and not active:
            return False
        if self._pending is not None:
            future, started = self._pending
            if not future.done() and time.monotonic() - started < self._timeout_s:
                self._warn(f'HIL service {self._client.srv_name} still busy; event dropped: '
                           f'{message}')
                return False
        if not self._client.service_is_ready():
            self._warn(f'HIL service {self._client.srv_name} is not available; '
                       f'intervention not forwarded: {message}')
            return False
        request = Trigger.Request() if self._kind == 'trigger' else SetBool.Request(data=active)
        future = self._client.call_async(request)
        future.add_done_callback(self._done)
        self._pending = (future, time.monotonic())
        self.calls += 1
        return True

    def _done(self, future: Any) -> None:
        try:
            result = future.result()
            self.last_result = f'success={result.success} {result.message}'
        except Exception as e:  # noqa: BLE001 - a remote failure is only reported
            self.last_result = f'failed: {e}'
        self._node.get_logger().info(f'HIL service answered: {self.last_result}')

    def _warn(self, text: str) -> None:
        if time.monotonic() - self._last_warn >= self._warn_period_s:
            self._last_warn = time.monotonic()
            self._node.get_logger().warning(text)
