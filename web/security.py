"""Response headers and cookie rules that keep patient data in the page that asked for it.

The content security policy allows scripts, styles and images from the node only, and no
inline script, so even text that slipped past escaping could not run. Pages and API answers
carry patient data and are never cached; static assets are.
"""

from __future__ import annotations

import ipaddress
from functools import lru_cache

from flask import Flask, Response, current_app, request
from flask.sessions import SecureCookieSessionInterface

IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
    "media-src 'self' blob:; connect-src 'self'; object-src 'none'; base-uri 'none'; "
    "frame-ancestors 'none'; form-action 'self'"
)


class SessionInterface(SecureCookieSessionInterface):
    """Secure cookies whenever the request came over TLS (directly or via a trusted proxy),
    so the same node works on plain loopback and behind HTTPS."""

    def get_cookie_secure(self, app: Flask) -> bool:
        return (
            bool(app.config.get("SESSION_COOKIE_SECURE"))
            or request.is_secure
            or forwarded_over_tls()
        )


def forwarded_over_tls() -> bool:
    """Whether a trusted proxy says the client reached it over HTTPS (``X-Forwarded-Proto``).
    A proxy that ends TLS talks plain HTTP to the node, so without this the session cookie
    would go out without its Secure flag; from any other peer the header is ignored."""
    peer = request.remote_addr or ""
    trusted = _networks(tuple(current_app.config["ECHO_AGENT_CONFIG"].web.trusted_proxies))
    if not trusted or not _is_trusted(peer, trusted):
        return False
    proto = request.headers.get("X-Forwarded-Proto", "").split(",")[0].strip().lower()
    return proto == "https"


def add_security_headers(response: Response) -> Response:
    response.headers.setdefault("Content-Security-Policy", CSP)
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("X-Frame-Options", "DENY")
    response.headers.setdefault("Referrer-Policy", "no-referrer")
    if request.endpoint != "static":
        response.headers["Cache-Control"] = "no-store"
    return response


@lru_cache(maxsize=8)
def _networks(entries: tuple[str, ...]) -> tuple[IpNetwork, ...]:
    return tuple(ipaddress.ip_network(e, strict=False) for e in entries)


def _is_trusted(address: str, networks: tuple[IpNetwork, ...]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in network for network in networks)


def client_address() -> str:
    """The address the login limits count against: the TCP peer, unless the peer is one of
    ``[web] trusted_proxies``; then the right-most ``X-Forwarded-For`` entry that is not a
    trusted proxy (what our own proxy saw; entries left of it are whatever the client wrote).
    A header from any other peer is ignored, or it would let a client pick a fresh address
    for every guess."""
    peer = request.remote_addr or ""
    trusted = _networks(tuple(current_app.config["ECHO_AGENT_CONFIG"].web.trusted_proxies))
    if not trusted or not _is_trusted(peer, trusted):
        return peer
    hops = [h.strip() for v in request.headers.getlist("X-Forwarded-For") for h in v.split(",")]
    hops = [h for h in hops if h]
    for hop in reversed(hops):
        if not _is_trusted(hop, trusted):
            return hop[:64]
    return hops[0][:64] if hops else peer
