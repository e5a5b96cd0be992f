"""Response headers and cookie rules that keep patient data in the page that asked for it.

The content security policy allows scripts, styles and images from the node only, and no
inline script, so even text that slipped past escaping could not run. Pages and API answers
carry patient data and are never cached; static assets are.
"""

from __future__ import annotations

from flask import Flask, Response, request
from flask.sessions import SecureCookieSessionInterface

CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
    "media-src 'self' blob:; connect-src 'self'; object-src 'none'; base-uri 'none'; "
    "frame-ancestors 'none'; form-action 'self'"
)


class SessionInterface(SecureCookieSessionInterface):
    """Secure cookies whenever the request came over TLS (directly or via a trusted proxy),
    so the same node works on plain loopback and behind HTTPS."""

    def get_cookie_secure(self, app: Flask) -> bool:
        return bool(app.config.get("SESSION_COOKIE_SECURE")) or request.is_secure


def add_security_headers(response: Response) -> Response:
    response.headers.setdefault("Content-Security-Policy", CSP)
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("X-Frame-Options", "DENY")
    response.headers.setdefault("Referrer-Policy", "no-referrer")
    if request.endpoint != "static":
        response.headers["Cache-Control"] = "no-store"
    return response
