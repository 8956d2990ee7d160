"""A TCP proxy on a loopback port that forwards bytes unchanged to a real server, and can play a
server dying mid-call: `cut_next_call()` closes the connection carrying the next call (the first
burst of client bytes at least `min_bytes` long: HTTP/2 pings and acknowledgements are shorter),
without forwarding it, as a crashed process's kernel would; with `down_for` it then refuses
connections for that long before it listens again on the same port (the server restarting).

TLS passes through it untouched, so the client's handshake is with the real server.
"""

from __future__ import annotations

import socket
import threading


class TcpProxy:
    """Forward 127.0.0.1:`port` to `upstream` ("host:port") until `close()`."""

    def __init__(self, upstream: str) -> None:
        host, _, port = upstream.rpartition(":")
        self._upstream = (host, int(port))
        self._lock = threading.Lock()
        self._pairs: set[tuple[socket.socket, socket.socket]] = set()
        self._armed: tuple[int, float] | None = None
        self._closed = False
        self.accepted = 0  # connections accepted
        self.cuts = 0  # connections cut mid-call
        self.cut_done = threading.Event()
        self._listener = self._listen(0)
        self.port = self._listener.getsockname()[1]
        self.target = f"127.0.0.1:{self.port}"

    # -- control ---------------------------------------------------------------------------

    def cut_next_call(self, *, min_bytes: int = 512, down_for: float = 0.0) -> None:
        """Close the connection on which the client next sends `min_bytes` or more at once; then
        refuse connections for `down_for` seconds (0: keep accepting)."""
        with self._lock:
            self._armed = (min_bytes, down_for)
            self.cut_done.clear()

    def down(self) -> None:
        """Stop listening: new connections are refused (live ones carry on)."""
        with self._lock:
            listener, self._listener = self._listener, None
        if listener is not None:
            _close(listener)  # shutdown() first: close() alone leaves a blocked accept() listening

    def up(self) -> None:
        """Listen again on the same port."""
        with self._lock:
            if self._closed or self._listener is not None:
                return
            self._listener = self._listen(self.port)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            pairs = list(self._pairs)
        self.down()
        for pair in pairs:
            _close(*pair)

    # -- forwarding ------------------------------------------------------------------------

    def _listen(self, port: int) -> socket.socket:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", port))
        listener.listen(64)
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()
        return listener

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # the listener was closed
            try:
                server = socket.create_connection(self._upstream, timeout=10)
            except OSError:
                client.close()
                continue
            server.settimeout(None)
            pair = (client, server)
            with self._lock:
                self.accepted += 1
                self._pairs.add(pair)
            threading.Thread(target=self._pump, args=(client, server, pair, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, pair, False), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, pair, from_client: bool) -> None:
        try:
            while data := source.recv(65536):
                if from_client and self._cut(len(data)):
                    break
                sink.sendall(data)
        except OSError:
            pass
        with self._lock:
            self._pairs.discard(pair)
        _close(*pair)

    def _cut(self, size: int) -> bool:
        """Whether this burst of client bytes is the call to cut (then the proxy goes down for as
        long as it was asked to, in the background)."""
        with self._lock:
            if self._armed is None or size < self._armed[0]:
                return False
            down_for = self._armed[1]
            self._armed = None
            self.cuts += 1
        if down_for > 0:
            self.down()
            timer = threading.Timer(down_for, self.up)
            timer.daemon = True
            timer.start()
        self.cut_done.set()
        return True


def _close(*sockets: socket.socket) -> None:
    for sock in sockets:
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        sock.close()
