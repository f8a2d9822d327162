"""The listening socket, bound by eptctl before uvicorn starts: a host that does not resolve, a busy port or a
forbidden one is one line and a hint (``EptctlError``), never uvicorn's own log line and exit code; and a host off
loopback is refused unless a token guards it (or the user says ``--insecure-no-token``).

uvicorn is handed the bound socket (``Server.run(sockets=...)``), so nobody can take the port between the check and
the start; it calls ``listen`` itself once the app is ready, and until then a client's connection is refused.
"""

from __future__ import annotations

import errno
import ipaddress
import socket

from eptctl.core.errors import ConfigError, EptctlError
from eptctl.serving.config import TOKEN_HINT, ServeConfig


def addresses(host: str, port: int) -> list[tuple]:
    """``getaddrinfo`` results (family, type, proto, canonname, sockaddr) for a TCP server on ``host``. Raises
    ``ConfigError`` if the host does not resolve."""
    try:
        return socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except (socket.gaierror, UnicodeError) as err:
        raise ConfigError(f"--host {host!r} does not resolve ({err})",
                          hint="give an IP address (127.0.0.1, ::1) or a name this machine resolves") from None


def is_loopback(host: str, port: int = 0) -> bool:
    """Whether every address ``host`` resolves to is a loopback one (127.0.0.0/8, ::1). ``0.0.0.0`` and ``::``
    (every interface) are not. Raises ``ConfigError`` if the host does not resolve."""
    found = [ipaddress.ip_address(info[4][0].split("%")[0]) for info in addresses(host, port)]
    return bool(found) and all(ip.is_loopback for ip in found)


def check_exposure(config: ServeConfig) -> None:
    """Refuse to serve off loopback without a token: anyone who reaches the address could use every adapter.
    Raises ``ConfigError`` (also for a host that does not resolve)."""
    if config.token or config.insecure_no_token or is_loopback(config.host, config.port):
        return
    raise ConfigError(f"--host {config.host} is reachable from other machines, and no token is set",
                      hint=f"set EPTCTL_SERVE_TOKEN ({TOKEN_HINT}), serve on 127.0.0.1, or pass "
                           "--insecure-no-token if a proxy in front authenticates")


def bind(config: ServeConfig) -> socket.socket:
    """A TCP socket bound (not yet listening) to ``config.host``:``config.port``, as uvicorn binds one
    (``SO_REUSEADDR``, so a restart need not wait for TIME_WAIT). Raises ``EptctlError`` naming the cause: the
    port in use, an address not on this machine, a port that needs privileges, a host that does not resolve."""
    family, kind, proto, _, sockaddr = addresses(config.host, config.port)[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(sockaddr)
    except OSError as err:
        sock.close()
        raise _bind_error(config, err) from None
    sock.set_inheritable(True)
    return sock


def _bind_error(config: ServeConfig, err: OSError) -> EptctlError:
    where = f"{config.host}:{config.port}"
    if err.errno == errno.EADDRINUSE:
        return EptctlError(f"cannot listen on {where}: the port is in use", hint=f"choose another --port, or stop "
                           f"what listens there (ss -ltnp 'sport = :{config.port}')")
    if err.errno in (errno.EACCES, errno.EPERM):
        return EptctlError(f"cannot listen on {where}: permission denied",
                           hint="ports below 1024 need root or CAP_NET_BIND_SERVICE: choose --port 1024 or above")
    if err.errno == errno.EADDRNOTAVAIL:
        return EptctlError(f"cannot listen on {where}: the address is not one of this machine's",
                           hint="give an address of this machine (ip addr), 127.0.0.1, or 0.0.0.0 with a token")
    return EptctlError(f"cannot listen on {where}: {err.strerror or err}", hint="check --host and --port")
