"""TEST STAND-INS FOR CIAO TOOLS: how each stand-in executable runs.

With ``HPCXT_STANDIN_SERVER`` set (the tests start ``_server.py``), the
call is handed to that fork server; otherwise the stand-in runs here. Either
way the work is ``_standin.run(tool)``. Imports nothing heavy, so a call
through the server costs one interpreter start-up.
"""

from __future__ import annotations

import json
import os
import socket
import struct
import sys


def _recv_status(conn: socket.socket) -> int | None:
    data = b""
    while len(data) < 4:
        chunk = conn.recv(4 - len(data))
        if not chunk:
            return None
        data += chunk
    return struct.unpack("!i", data)[0]


def _is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


def main(tool: str) -> None:
    path = os.environ.get("HPCXT_STANDIN_SERVER")
    if not path:
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        from _standin import run
        run(tool)
        return
    call = {"tool": tool, "args": sys.argv[1:], "cwd": os.getcwd(), "env": dict(os.environ)}
    fds = [fd if _is_open(fd) else os.open(os.devnull, os.O_RDWR) for fd in (0, 1, 2)]
    message = json.dumps(call).encode()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        conn.connect(path)
        socket.send_fds(conn, [struct.pack("!Q", len(message))], fds)
        conn.sendall(message)
        status = _recv_status(conn)
    sys.exit(1 if status is None else status)
