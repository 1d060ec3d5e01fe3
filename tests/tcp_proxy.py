"""A TCP relay on loopback that can be stopped and started again on the same port.

It stands between clients and a server (moto's S3 server in the tests) so that a test can make
the server go away and come back as its clients see it: stopped, a connection to the port is
refused and the open ones are cut; started again, the server answers with its data intact
(moto keeps buckets in memory only, so stopping moto itself would lose them).
"""

from __future__ import annotations

import selectors
import socket
import threading
from contextlib import suppress

#: Bytes relayed per read.
CHUNK_BYTES = 65536
#: Seconds a relay thread waits on its sockets before it checks whether it should stop.
POLL_S = 0.1


class TcpProxy:
    """Relay connections from ``127.0.0.1:port`` to ``target``; :meth:`stop` and :meth:`start` at will.

    Parameters
    ----------
    target
        ``(host, port)`` of the server (a loopback address).
    port
        The port to listen on; 0: one the OS picks at the first :meth:`start`, kept after.
    """

    def __init__(self, target: tuple[str, int], port: int = 0) -> None:
        self.target = target
        self.port = port
        self._listener: socket.socket | None = None
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self._open: set[socket.socket] = set()
        self._lock = threading.Lock()

    @property
    def url(self) -> str:
        """``http://127.0.0.1:<port>``."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        """Whether it accepts connections."""
        return self._listener is not None

    def start(self) -> TcpProxy:
        """Listen (on the same port as before, if it ran before) and relay."""
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        listener.settimeout(POLL_S)
        self.port = listener.getsockname()[1]
        self._listener = listener
        self._stopping.clear()
        thread = threading.Thread(target=self._accept, name=f"tcp-proxy-{self.port}", daemon=True)
        thread.start()
        self._threads = [thread]
        return self

    def stop(self) -> None:
        """Stop listening and cut every open connection: the server is gone, as clients see it."""
        self._stopping.set()
        for thread in self._threads:
            thread.join(timeout=5)
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        with self._lock:
            for sock in self._open:
                with suppress(OSError):
                    sock.close()
            self._open.clear()

    def _accept(self) -> None:
        assert self._listener is not None
        while not self._stopping.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._open.update((client, upstream))
            threading.Thread(target=self._relay, args=(client, upstream), daemon=True).start()

    def _relay(self, a: socket.socket, b: socket.socket) -> None:
        peers = {a: b, b: a}
        with selectors.DefaultSelector() as selector:
            try:  # stop() may have cut the connection before this thread got to it: a closed socket, nothing to relay
                for sock in peers:
                    sock.settimeout(5)
                    selector.register(sock, selectors.EVENT_READ)
                while not self._stopping.is_set():
                    for key, _ in selector.select(POLL_S):
                        data = key.fileobj.recv(CHUNK_BYTES)  # type: ignore[union-attr]
                        if not data:
                            return
                        peers[key.fileobj].sendall(data)  # type: ignore[index]
            except (OSError, ValueError):  # ValueError: a socket closed under the selector (its fd is -1)
                return
            finally:
                with self._lock:
                    for sock in peers:
                        self._open.discard(sock)
                        with suppress(OSError):
                            sock.close()
