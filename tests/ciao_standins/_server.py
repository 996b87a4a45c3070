"""TEST STAND-INS FOR CIAO TOOLS: a fork server, so a call costs no imports.

Each stand-in call would otherwise start Python and import numpy and
astropy (about 0.4 s, more than the call's work). ``serve`` imports
``_standin`` once and forks a child per call; the stand-in executables
(``_client.main``) connect when ``HPCXT_STANDIN_SERVER`` names the socket,
send their argv, working directory and environment, and their stdin, stdout
and stderr as file descriptors, and exit with the status the child sends
back. The child runs exactly what the executable would run, with those
descriptors, that directory and that environment; it exits when the
executable dies (the connection closes), as a CIAO tool killed with its
process group would.

Run as ``python _server.py SOCKET``; it serves until killed.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import struct
import sys
import threading

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _standin  # noqa: E402  (the imports paid once)

HEADER = struct.Struct("!Q")  # the length of the JSON call that follows


def _exit_when_closed(conn: socket.socket) -> None:
    """End the child as soon as the executable's side of the connection closes."""
    try:
        conn.recv(1)
    finally:
        os._exit(143)


def _run_call(conn: socket.socket) -> None:
    """In the forked child: become the tool call, then report its exit status."""
    header, fds, _, _ = socket.recv_fds(conn, HEADER.size, 3)
    size = HEADER.unpack(header)[0]
    message = bytearray()
    while len(message) < size:  # a stream socket delivers a long message in pieces
        chunk = conn.recv(size - len(message))
        if not chunk:
            raise ConnectionError("the stand-in executable hung up mid-call")
        message += chunk
    call = json.loads(message)
    for target, fd in enumerate(fds):
        os.dup2(fd, target)
        os.close(fd)
    os.chdir(call["cwd"])
    os.environ.clear()
    os.environ.update(call["env"])
    sys.argv = [call["tool"], *call["args"]]
    threading.Thread(target=_exit_when_closed, args=(conn,), daemon=True).start()
    status = 0
    try:
        _standin.run(call["tool"])
    except SystemExit as exc:
        status = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        if not isinstance(exc.code, int) and exc.code is not None:
            print(exc.code, file=sys.stderr)
    except BaseException as exc:  # a stand-in bug: show it as the tool would
        import traceback
        traceback.print_exception(exc)
        status = 1
    sys.stdout.flush()
    sys.stderr.flush()
    conn.sendall(struct.pack("!i", status))
    os._exit(status)


def _die_with_parent() -> None:
    """Ask Linux to end this server when the test process that started it dies
    (elsewhere the fixture's cleanup is all there is)."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes
    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def serve(path: str) -> None:
    _die_with_parent()
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # children are reaped automatically
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    # listening before the socket appears under its name: its existence means ready
    server.bind(path + ".starting")
    server.listen(64)
    os.rename(path + ".starting", path)
    while True:
        conn, _ = server.accept()
        if os.fork() == 0:
            server.close()
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            try:
                _run_call(conn)
            except BaseException:  # a broken call: say why, where the test shows it
                import traceback
                traceback.print_exc()
            finally:
                os._exit(1)
        conn.close()


if __name__ == "__main__":
    serve(sys.argv[1])
