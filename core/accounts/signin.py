"""When the app asks who you are. In order: an identity provider configured for st.login
(.streamlit/secrets.toml, [auth]); a trusted reverse-proxy header (FTLAB_TRUSTED_HEADER, e.g. X-Forwarded-User);
accounts with passwords in FTLAB_HOME/users.toml; otherwise nobody is asked: the one-person app, which is only
allowed on a loopback address unless the server was started with the explicit flag (OPEN_FLAG)."""
from __future__ import annotations

import ipaddress
import os
from pathlib import Path

from core.accounts import users

OPEN_FLAG = "--without-sign-in"  # `streamlit run app.py --server.address 0.0.0.0 -- --without-sign-in`
HEADER_ENV = "FTLAB_TRUSTED_HEADER"


def header() -> str:
    return os.environ.get(HEADER_ENV, "")


def method(home: Path, identity_provider: bool) -> str:
    """oidc | proxy | password | none."""
    if identity_provider:
        return "oidc"
    if header():
        return "proxy"
    if users.has_passwords(home):
        return "password"
    return "none"


def loopback(address: str) -> bool:
    """Whether only this machine can reach an address. Streamlit listens on every interface when none is set."""
    if address in ("localhost",):
        return True
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


def open_refusal(address: str, sign_in: str, argv: list[str]) -> str | None:
    """Why this server must not serve pages, or None: reachable from other machines with nobody signed in."""
    if sign_in != "none" or loopback(address) or OPEN_FLAG in argv:
        return None
    return (f"This server listens on {address or 'every network interface'} with no sign-in, so anyone who can reach "
            "it would see and change every dataset and run. Set up sign-in (README: Sharing a server), listen on "
            f"127.0.0.1, or, on a network you trust, restart it with `-- {OPEN_FLAG}` after app.py.")
