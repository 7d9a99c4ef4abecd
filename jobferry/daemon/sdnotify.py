"""systemd's notification protocol (``sd_notify``), in a few lines and no dependency.

Under a ``Type=notify`` unit, systemd passes ``NOTIFY_SOCKET`` (a unix datagram
socket: a path, or an abstract name written ``@name``) and, with ``WatchdogSec=``,
``WATCHDOG_USEC`` (and ``WATCHDOG_PID``, the process meant). The daemon says
``READY=1`` once it listens (after ``daemon.json`` is written), ``STOPPING=1``
when it begins to stop, and ``WATCHDOG=1`` from its event loop every half
watchdog period (``watchdog``, a supervised task): a loop that hangs stops the
pings, and systemd kills and restarts the daemon.

``Notifier.from_environment`` reads these variables once and removes them from the
process's environment, so that jobs (which inherit it) never see them. Without
``NOTIFY_SOCKET`` every call does nothing. A message that cannot be sent is
logged, never raised: systemd's view is not worth the daemon.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket

logger = logging.getLogger(__name__)

ENV_SOCKET = "NOTIFY_SOCKET"
ENV_WATCHDOG_USEC = "WATCHDOG_USEC"
ENV_WATCHDOG_PID = "WATCHDOG_PID"


class Notifier:
    """Sends state lines to systemd's notification socket *address* (None: nowhere)."""

    def __init__(self, address: str | None, watchdog_s: float | None = None) -> None:
        if address and address.startswith("@"):
            address = "\0" + address[1:]  # an abstract socket
        elif address and not address.startswith("/"):
            logger.warning("%s=%r is not a unix socket; not notifying", ENV_SOCKET, address)
            address = None
        self.address = address or None
        #: How often to ping the watchdog, seconds (half systemd's period); None: never.
        self.watchdog_s = watchdog_s if self.address else None

    @classmethod
    def from_environment(cls) -> Notifier:
        """The notifier systemd set up for this process (taken out of ``os.environ``)."""
        address = os.environ.pop(ENV_SOCKET, None)
        usec = os.environ.pop(ENV_WATCHDOG_USEC, None)
        pid = os.environ.pop(ENV_WATCHDOG_PID, None)
        watchdog_s = None
        if usec and (not pid or pid == str(os.getpid())):
            try:
                watchdog_s = int(usec) / 1e6 / 2 if int(usec) > 0 else None
            except ValueError:
                logger.warning("%s=%r is not a number; no watchdog pings", ENV_WATCHDOG_USEC, usec)
        return cls(address, watchdog_s)

    def notify(self, state: str) -> bool:
        """Send *state* (``KEY=value`` lines); True if it was sent."""
        if self.address is None:
            return False
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.connect(self.address)
                sock.send(state.encode(), socket.MSG_DONTWAIT)  # never block the loop
        except OSError as exc:
            logger.warning("could not notify systemd (%s): %s", state.split("\n", 1)[0], exc)
            return False
        return True

    async def watchdog(self, stop: asyncio.Event) -> None:
        """Ping the watchdog from the event loop until *stop* (a supervised task)."""
        interval = self.watchdog_s
        if interval is None:
            await stop.wait()
            return
        while not stop.is_set():
            self.notify("WATCHDOG=1")
            try:
                await asyncio.wait_for(stop.wait(), timeout=interval)
            except TimeoutError:
                pass
