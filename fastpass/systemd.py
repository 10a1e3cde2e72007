"""systemd's readiness protocol (sd_notify(3)) without libsystemd: one datagram per state change,
sent to the unix socket that $NOTIFY_SOCKET names ('@' at its start: the abstract namespace).

`fastpass mount -f` under a `Type=notify` unit is the unit's main process: it says READY=1 once
the mount serves (every first worker set up) and STOPPING=1 when told to stop, before it
unmounts.  A server in the background never notifies: the `fastpass mount` that started it
returns once the mount serves, as `Type=forking` expects, and the server itself is not the
process systemd started, so it drops $NOTIFY_SOCKET.

The send blocks while the receiver's queue is full, as sd_notify's does: systemd reads its
socket at once, and a STOPPING=1 that could be lost would leave systemd unaware of a stop it
did not ask for.
"""

from __future__ import annotations

import logging
import os
import socket

log = logging.getLogger("fastpass")

VARIABLE = "NOTIFY_SOCKET"


def notify(message: str) -> None:
    """Tell systemd `message` ("READY=1", "STOPPING=1"), if it listens."""
    path = os.environ.get(VARIABLE)
    if not path:
        return
    address = os.fsencode(path)
    if address.startswith(b"@"):
        address = b"\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
            s.sendto(message.encode(), address)
    except OSError as e:
        log.warning("could not tell systemd %s on %s: %s", message, path, e.strerror or e)


def forget() -> None:
    """Never notify from this process (a background server: systemd did not start it)."""
    os.environ.pop(VARIABLE, None)
