"""Who may control the line from the station (operators' tokens) and over OPC UA (users' passwords): a file
of `name sha256-of-secret` lines, which never holds the secret itself, plus one user from the environment.
Secrets are random (`qc station token`, `qc opcua user`), so one sha256 is enough to keep them."""

from __future__ import annotations

import hashlib
import hmac
import os
from pathlib import Path

from edge.errors import EdgeError

__all__ = ["digest", "find_user", "load_users", "secret_line"]


def digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def secret_line(name: str, secret: str) -> str:
    """A users file line: the name and the secret's sha256."""
    return f"{name} {digest(secret)}"


def load_users(path: Path | None, key: str, env: str, env_user: str) -> dict[str, str]:
    """{name: sha256 of the secret} from the file `key` names, and `env_user` with the secret in `env`."""
    users = {}
    if path is not None:
        try:
            lines = Path(path).read_text().splitlines()
        except OSError as exc:
            raise EdgeError(f"{key} {path}: cannot be read ({exc.strerror})") from None
        for n, line in enumerate(lines, 1):
            if not line.strip() or line.startswith("#"):
                continue
            parts = line.split()
            if len(parts) != 2 or len(parts[1]) != 64:
                raise EdgeError(f"{key} {path} line {n}: not `name sha256-of-secret`")
            users[parts[0]] = parts[1].lower()
    if os.environ.get(env):
        users[env_user] = digest(os.environ[env])
    return users


def find_user(users: dict[str, str], secret: str, name: str | None = None) -> str | None:
    """The user whose secret this is (and whose name is `name`, when given). Every entry is compared, in
    constant time: how long it takes does not say which matched."""
    found, given = None, digest(secret)
    for user, expected in users.items():
        if hmac.compare_digest(given, expected) and (name is None or hmac.compare_digest(user.encode(), name.encode())):
            found = user
    return found
