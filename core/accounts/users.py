"""The accounts file an admin edits: FTLAB_HOME/users.toml, salted scrypt hashes, never a password.

    [defaults]            # for everyone not given their own
    disk_gb = 20
    jobs = 2
    [users.alice]
    password = "scrypt$16384$8$1$<salt hex>$<hash hex>"   # `python -m core users add alice`
    admin = true
    disk_gb = 100

With an identity provider (st.login) or a trusted proxy the file holds no passwords, only admins and quotas.
"""
from __future__ import annotations

import functools
import hashlib
import hmac
import os
import re
import secrets
import threading
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path

USERS_FILE = "users.toml"
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@+-]{0,99}$")  # also a folder name: no /, no .., no spaces
SCRYPT = (2**14, 8, 1)  # n, r, p: about 50 ms and 16 MB per check, which is what makes guessing slow
DEFAULT_DISK_GB = 20.0
DEFAULT_JOBS = 2


class AccountError(ValueError):
    """A sign-in or an account change refused, with the reason in a sentence."""


@dataclass(frozen=True)
class User:
    name: str
    admin: bool = False
    disk_gb: float = DEFAULT_DISK_GB  # the projects this user owns, all together
    jobs: int = DEFAULT_JOBS  # running and queued at once
    password: str = ""  # the hash; empty when the identity comes from elsewhere

    @property
    def disk_bytes(self) -> int:
        return int(self.disk_gb * 1e9)


def users_file(home: Path) -> Path:
    return Path(home) / USERS_FILE


def check_name(name: str) -> str:
    if not NAME.match(name) or name in (".", ".."):
        raise AccountError(f"{name!r} is not a usable user name: letters, digits and . _ @ + - only, at most 100.")
    return name


def load(home: Path) -> tuple[dict[str, User], User]:
    """The accounts and the defaults for anyone unlisted. A damaged file is an error, never 'no accounts'
    (that would open the server)."""
    path = users_file(home)
    if not path.is_file():
        return {}, User("")
    try:
        doc = tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise AccountError(f"{path} is not valid TOML ({exc}); fix it or write it again with `python -m core users`.")
    try:
        base = doc.get("defaults", {})
        defaults = User("", disk_gb=float(base.get("disk_gb", DEFAULT_DISK_GB)), jobs=int(base.get("jobs", DEFAULT_JOBS)))
        users = {}
        for name, entry in doc.get("users", {}).items():
            users[name] = User(check_name(name), admin=bool(entry.get("admin", False)),
                               disk_gb=float(entry.get("disk_gb", defaults.disk_gb)),
                               jobs=int(entry.get("jobs", defaults.jobs)), password=str(entry.get("password", "")))
    except (AttributeError, TypeError, ValueError) as exc:  # a table where a number belongs, and the like
        raise AccountError(f"{path} does not hold accounts as README (Sharing a server) shows ({exc}); fix it.") from None
    return users, defaults


def lookup(home: Path, name: str) -> User:
    """The account of a signed-in name: listed, or the defaults under that name (an identity provider's user)."""
    users, defaults = load(home)
    return users.get(name) or User(check_name(name), disk_gb=defaults.disk_gb, jobs=defaults.jobs)


def has_passwords(home: Path) -> bool:
    return any(u.password for u in load(home)[0].values())


def hash_password(password: str, salt: bytes | None = None) -> str:
    n, r, p = SCRYPT
    salt = salt or secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=n, r=r, p=p, dklen=32)
    return f"scrypt${n}${r}${p}${salt.hex()}${digest.hex()}"


def password_matches(password: str, stored: str) -> bool:
    try:
        kind, n, r, p, salt, digest = stored.split("$")
        if kind != "scrypt":
            return False
        got = hashlib.scrypt(password.encode(), salt=bytes.fromhex(salt), n=int(n), r=int(r), p=int(p), dklen=32)
    except ValueError:
        return False
    return hmac.compare_digest(got.hex(), digest)


@functools.cache
def _unusable() -> str:
    """A hash no password matches, checked against when a name is unknown; made on the first sign-in, not when
    every process that imports this module starts (a scrypt costs 50 ms)."""
    return hash_password(secrets.token_hex(16))


class Throttle:
    """Slows guessing: after `allowed` failures for one name, that name is refused for `seconds`."""

    def __init__(self, allowed: int = 5, seconds: float = 60.0):
        self.allowed, self.seconds = allowed, seconds
        self._failures: dict[str, list[float]] = {}
        self._lock = threading.Lock()

    def check(self, name: str) -> None:
        with self._lock:
            recent = [t for t in self._failures.get(name, []) if time.time() - t < self.seconds]
            self._failures[name] = recent
        if len(recent) >= self.allowed:
            wait = int(self.seconds - (time.time() - recent[0])) + 1
            raise AccountError(f"Too many wrong passwords for {name}: try again in {wait} s.")

    def failed(self, name: str) -> None:
        with self._lock:
            self._failures.setdefault(name, []).append(time.time())

    def clear(self, name: str) -> None:
        with self._lock:
            self._failures.pop(name, None)


def authenticate(home: Path, name: str, password: str, throttle: Throttle) -> User:
    """The user whose password this is; the same refusal for an unknown name and a wrong password."""
    throttle.check(name)
    user = load(home)[0].get(name)
    stored = user.password if user and user.password else _unusable()  # the same time spent when the name is unknown
    if not password_matches(password, stored) or stored is _unusable():
        throttle.failed(name)
        raise AccountError("Wrong user name or password.")
    throttle.clear(name)
    return user


SESSION_KEY = ".session-key"
SESSION_HOURS = 12


def _session_key(home: Path) -> bytes:
    """The server's secret for sign-in cookies, made once (owner-only)."""
    path = Path(home) / SESSION_KEY
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(secrets.token_bytes(32))
    return path.read_bytes()


def _signature(home: Path, name: str, expires: int, password: str) -> str:
    # The password hash is signed too: a changed password ends every earlier sign-in.
    return hmac.new(_session_key(home), f"{name}|{expires}|{password}".encode(), hashlib.sha256).hexdigest()


def session_token(home: Path, user: User, hours: float = SESSION_HOURS) -> str:
    """What the browser keeps (a cookie) so a reload or a dropped connection does not ask for the password."""
    expires = int(time.time() + hours * 3600)
    return f"{user.name}:{expires}:{_signature(home, user.name, expires, user.password)}"


def token_user(home: Path, token: str) -> User | None:
    """The user a cookie signs in, or None (forged, expired, password changed, account removed)."""
    try:
        name, expires, signature = token.rsplit(":", 2)
        user = load(home)[0].get(name)
        if user is None or not user.password or int(expires) < time.time():
            return None
    except (ValueError, AccountError):
        return None
    return user if hmac.compare_digest(signature, _signature(home, name, int(expires), user.password)) else None


def save(home: Path, users: dict[str, User], defaults: User) -> None:
    """Rewrite the file (owner-only: it holds hashes)."""
    lines = ["# Fine-Tune Lab accounts. Passwords: `python -m core users add NAME` (stored as salted scrypt hashes).",
             "[defaults]", f"disk_gb = {defaults.disk_gb:g}", f"jobs = {defaults.jobs}", ""]
    for user in sorted(users.values(), key=lambda u: u.name):
        lines += [f'[users."{user.name}"]', f"admin = {str(user.admin).lower()}", f"disk_gb = {user.disk_gb:g}",
                  f"jobs = {user.jobs}"] + ([f'password = "{user.password}"'] if user.password else []) + [""]
    path = users_file(home)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write("\n".join(lines))
    os.replace(tmp, path)


def put(home: Path, name: str, password: str | None = None, admin: bool | None = None, disk_gb: float | None = None,
        jobs: int | None = None) -> User:
    """Add an account or change one; None leaves a field as it was."""
    users, defaults = load(home)
    old = users.get(check_name(name)) or User(name, disk_gb=defaults.disk_gb, jobs=defaults.jobs)
    if password is not None and len(password) < 8:
        raise AccountError("A password needs at least 8 characters.")
    user = User(name, admin=old.admin if admin is None else admin, disk_gb=old.disk_gb if disk_gb is None else disk_gb,
                jobs=old.jobs if jobs is None else jobs,
                password=old.password if password is None else hash_password(password))
    users[name] = user
    save(home, users, defaults)
    return user


def remove(home: Path, name: str) -> None:
    users, defaults = load(home)
    if users.pop(name, None) is None:
        raise AccountError(f"There is no account {name!r}.")
    save(home, users, defaults)
