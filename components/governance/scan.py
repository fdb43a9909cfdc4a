"""What the readiness evidence looks for in files: the user a Dockerfile's final stage runs as, and anything in a
compiled pipeline package that looks like a secret value. Pure functions over file contents."""

from __future__ import annotations

import re
from collections.abc import Mapping

DIGEST = re.compile(r"@sha256:[0-9a-f]{64}$")  # an image reference pinned by digest


def final_user(dockerfile: str) -> str | None:
    """The user the final stage of a Dockerfile runs as (its last USER after the last FROM), or None (root)."""
    user = None
    for line in dockerfile.splitlines():
        words = line.strip().split()
        if not words:
            continue
        if words[0].upper() == "FROM":
            user = None
        elif words[0].upper() == "USER" and len(words) > 1:
            user = words[1]
    return user


def is_root(user: str | None) -> bool:
    return user is None or user.split(":")[0] in ("0", "root")


SECRET_PATTERNS = {
    "AWS access key id": re.compile(r"\b(AKIA|ASIA)[0-9A-Z]{16}\b"),
    "private key": re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
    "password in a URL": re.compile(r"\b[a-z][a-z0-9+.-]*://[^\s/:@'\"]+:[^\s/@'\"]+@"),
    "bearer token": re.compile(r"\bBearer\s+[A-Za-z0-9._~+/=-]{20,}"),
}
SECRET_NAME = re.compile(r"(PASSWORD|SECRET|TOKEN|HASH_KEY|ACCESS_KEY)", re.IGNORECASE)


def secret_findings(text: str, secret_values: Mapping[str, str]) -> list[str]:
    """What in a compiled package looks like a secret: a known secret's value (by its variable name, never the
    value), a credential pattern, or a literal env value under a secret-like name. Names and keys alone are fine."""
    found = [f"the value of {name}" for name, value in sorted(secret_values.items()) if len(value) >= 6 and value in text]
    found += [what for what, pattern in SECRET_PATTERNS.items() if pattern.search(text)]
    for name, value in re.findall(r"name:\s*([A-Za-z_][A-Za-z0-9_]*)\s*\n\s*value:\s*(\S+)", text):
        if SECRET_NAME.search(name) and value not in ("''", '""'):
            found.append(f"a literal value for {name}")
    return found
