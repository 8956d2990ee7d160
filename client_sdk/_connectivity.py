"""Why a call reached no server: a connection lost mid-call or a server not accepting connections
(both worth retrying: the server is restarting), or TLS refusing this client's connection (not
worth it: a certificate is wrong).

gRPC reports all of them as UNAVAILABLE, with messages meant for people that overlap: a server
that dies mid-call leaves "Stream removed (Socket closed)", one that refuses the client
certificate under TLS 1.3 "... Socket closed". So a `Link` tells them apart by what it observes
of the connection, never by the message:

- The channel's connectivity state right after the failure. gRPC fails a call for want of a
  connection only once connecting has failed, in TRANSIENT_FAILURE, which the channel keeps until
  a connection is READY again; a call lost on a connection that was up leaves it READY or IDLE.
- What the link has seen before. A connection of this channel that was once up (its TLS handshake
  done, a call answered) means the server accepts this client, and a probe that once found the
  server not listening means it was down: either way a later failure to connect is the server
  coming and going, the more so as gRPC keeps a channel failing through its reconnect backoff for
  a while after the server is back.
- A TCP connection to the target. A server that is down refuses it; one that accepts it while
  this channel has never got a connection through refused the TLS set-up.

Only channels the SDK opened are probed, since it knows what they dial; on a channel the caller
made, every UNAVAILABLE is taken as transient.
"""

from __future__ import annotations

import asyncio
import queue
import socket

import grpc

from foundation.errors import REASON_METADATA_KEY, REQUEST_ID_METADATA_KEY, TlsRefusedError

#: How long a probe waits for the server to accept a TCP connection (loopback and LAN answer in
#: milliseconds; a host that drops the attempt counts as down).
PROBE_SECONDS = 1.0
#: How long to wait for a synchronous channel to report its state (it does so from a thread).
_STATE_SECONDS = 5.0
_DEFAULT_PORT = 443  # what gRPC dials for a target without a port


def _address(target: str) -> tuple[str, str, int] | None:
    """("tcp", host, port) or ("unix", path, 0) for a gRPC target, or None for a target naming a
    resolver this module does not know (then no probe is made)."""
    for scheme in ("unix-abstract:", "unix://", "unix:"):
        if target.startswith(scheme):
            path = target[len(scheme):]
            return ("unix", "\0" + path if scheme == "unix-abstract:" else path, 0)
    if target.startswith("dns:"):
        target = target[4:]
        if target.startswith("//"):
            target = target[2:].partition("/")[2]  # dns://authority/host:port
    elif target.startswith(("ipv4:", "ipv6:")):
        target = target[5:].split(",")[0]
    elif "://" in target or not target:
        return None
    if target.startswith("["):
        host, _, rest = target[1:].partition("]")
        port = rest.removeprefix(":")
    elif target.count(":") == 1:
        host, _, port = target.partition(":")
    else:
        host, port = target, ""  # a bare host, or a bare IPv6 address
    if not host or (port and not port.isdigit()):
        return None
    return ("tcp", host, int(port) if port else _DEFAULT_PORT)


def _accepts(address: tuple[str, str, int], timeout: float) -> bool:
    """Whether something accepts a TCP (or Unix socket) connection at `address` now."""
    kind, host, port = address
    try:
        if kind == "unix":
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(timeout)
                sock.connect(host)
        else:
            socket.create_connection((host, port), timeout=timeout).close()
    except OSError:
        return False
    return True


async def _accepts_async(address: tuple[str, str, int], timeout: float) -> bool:
    kind, host, port = address
    try:
        async with asyncio.timeout(timeout):
            if kind == "unix":
                _, writer = await asyncio.open_unix_connection(host)
            else:
                _, writer = await asyncio.open_connection(host, port)
    except (OSError, TimeoutError):
        return False
    writer.close()
    return True


def _sync_state(channel: grpc.Channel) -> grpc.ChannelConnectivity | None:
    """The state of a synchronous channel now, or None when it does not say. A sync channel
    reports its state only to subscribers (from a thread of its own), so subscribe for one report."""
    reports: queue.SimpleQueue = queue.SimpleQueue()
    report = reports.put
    try:
        channel.subscribe(report, try_to_connect=False)
    except (AttributeError, NotImplementedError, ValueError):
        return None  # not a gRPC channel (or a closed one)
    try:
        return reports.get(timeout=_STATE_SECONDS)
    except queue.Empty:
        return None
    finally:
        channel.unsubscribe(report)


class Link:
    """A channel the SDK calls on, what it dials, and what its connections have shown so far.

    `refused(exc)` (or `await refused_async(exc)` for a grpc.aio channel) says whether a failed
    call's connection was refused by TLS; `refusal(exc)` is the error to raise then. Call
    `answered()` when a call succeeds.
    """

    def __init__(self, channel, target: str = "", *, secure: bool = True, client_certificate: bool = True) -> None:
        """`target`: what the channel dials, '' when unknown (a channel the caller made: never
        probed). `secure`: whether it speaks TLS; `client_certificate`: whether it presents one."""
        self.channel = channel
        self.target = target
        self._address = _address(target) if target else None
        self._secure = secure
        self._client_certificate = client_certificate
        self._seen_up = False  # a connection of this channel was up: the server accepts this client
        self._seen_down = False  # a probe found the server not accepting connections

    def answered(self) -> None:
        """Record that a call got its answer: a connection of this channel was up."""
        self._seen_up = True

    def refused(self, exc: grpc.RpcError) -> bool:
        """Whether `exc` is TLS refusing this channel's connection (see the module docstring)."""
        if not self._may_be_refused(exc) or not self._failed_to_connect(_sync_state(self.channel)):
            return False
        return self._probed(_accepts(self._address, PROBE_SECONDS))

    async def refused_async(self, exc: grpc.RpcError) -> bool:
        """`refused` for a grpc.aio channel."""
        if not self._may_be_refused(exc):
            return False
        try:
            state = self.channel.get_state(try_to_connect=False)
        except (AttributeError, NotImplementedError):
            return False
        if not self._failed_to_connect(state):
            return False
        return self._probed(await _accepts_async(self._address, PROBE_SECONDS))

    def refusal(self, exc: grpc.RpcError) -> TlsRefusedError:
        """The error for a call whose connection TLS refused: gRPC's words, then what to check."""
        where = f"the server at {self.target}"
        if not self._secure:
            hint = (
                f"{where} accepts connections but closed this one before it was ready: it probably "
                "speaks TLS; give the client a credential (at least the CA that signed the server's certificate)"
            )
        elif self._client_certificate:
            hint = (
                f"TLS set-up with {where} failed: check that the client certificate is unexpired and issued "
                "by the server's CA, that the CA the client trusts signed the server's certificate, and "
                "that the server's certificate names the host dialled"
            )
        else:
            hint = (
                f"TLS set-up with {where} failed: check that the CA the client trusts signed the server's "
                "certificate and that the certificate names the host dialled, and whether the server asks "
                "for a client certificate"
            )
        trailers = dict(exc.trailing_metadata() or ())
        return TlsRefusedError(
            f"{exc.details() or exc.code().name} -- {hint}; retrying will not help",
            request_id=trailers.get(REQUEST_ID_METADATA_KEY),
        )

    def _may_be_refused(self, exc: grpc.RpcError) -> bool:
        if exc.code() != grpc.StatusCode.UNAVAILABLE:
            return False
        if any(key == REASON_METADATA_KEY for key, _ in exc.trailing_metadata() or ()):
            self._seen_up = True  # the server itself answered UNAVAILABLE
            return False
        return self._address is not None and not (self._seen_up or self._seen_down)

    def _failed_to_connect(self, state: grpc.ChannelConnectivity | None) -> bool:
        """Whether the channel's state after a failure says it failed to connect."""
        if state in (grpc.ChannelConnectivity.READY, grpc.ChannelConnectivity.IDLE):
            self._seen_up = True  # the call was on a connection that was up, and was lost
        return state == grpc.ChannelConnectivity.TRANSIENT_FAILURE

    def _probed(self, accepted: bool) -> bool:
        if not accepted:
            self._seen_down = True
        return accepted
