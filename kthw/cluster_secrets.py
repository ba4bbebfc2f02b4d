"""The cluster's secrets that are not certificates, kept in the PKI folder beside them.

The encryption-at-rest config (the key that seals every Secret in etcd) and Weave Net's mesh
password: each generated once, written 0600, and then kept byte for byte, since a new one
would make data unreadable or split the mesh. (Named so, not ``secrets``: that is the
standard library module used here to generate them.)
"""

from __future__ import annotations

import base64
import secrets
from pathlib import Path

import yaml

from kthw.pkifiles import PkiError, fix_mode, write_private

ENCRYPTION_CONFIG = "encryption-config.yaml"
# Weave Net's mesh password (cni: weave): encrypts and authenticates traffic between peers.
WEAVE_PASSWORD = "weave-password"


def ensure_cluster_secrets(pki_dir: Path, weave: bool) -> dict[str, str]:
    """The encryption config, and with ``weave`` the Weave password: what was done, per report name."""
    actions = {"encryption-config": ensure_encryption_config(pki_dir / ENCRYPTION_CONFIG)}
    if weave:
        actions[WEAVE_PASSWORD] = ensure_weave_password(pki_dir / WEAVE_PASSWORD)
    return actions


# --------------------------------------------------------------------------- encryption at rest


def encryption_config(secret_b64: str) -> str:
    """EncryptionConfiguration for the apiserver: Secrets sealed with secretbox (XSalsa20 +
    Poly1305, recommended over aescbc), identity last so data written before still reads."""
    doc = {
        "apiVersion": "apiserver.config.k8s.io/v1",
        "kind": "EncryptionConfiguration",
        "resources": [
            {
                "resources": ["secrets"],
                "providers": [
                    {"secretbox": {"keys": [{"name": "key1", "secret": secret_b64}]}},
                    {"identity": {}},
                ],
            }
        ],
    }
    return yaml.safe_dump(doc, sort_keys=False)


def encryption_secret(path: Path) -> str | None:
    """The key inside an existing encryption config, or None if absent/unreadable."""
    try:
        doc = yaml.safe_load(path.read_text())
        providers = doc["resources"][0]["providers"]
        secret = providers[0]["secretbox"]["keys"][0]["secret"]
        if len(base64.b64decode(secret, validate=True)) == 32:
            return secret
    except (OSError, yaml.YAMLError, KeyError, IndexError, TypeError, ValueError):
        return None
    return None


def ensure_encryption_config(path: Path) -> str:
    """Generate the key once; afterwards keep it (losing it makes every Secret unreadable)."""
    secret = encryption_secret(path)
    if secret is None and path.exists():
        raise PkiError(f"{path} exists but holds no usable secretbox key. Replacing it would make "
                       "every Secret in etcd unreadable. Fix: restore it from your backup, or delete "
                       "it only for a cluster whose etcd holds no Secrets yet.")
    if secret is None:
        secret = base64.b64encode(secrets.token_bytes(32)).decode()
        write_private(path, encryption_config(secret).encode())
        return "created"
    # A valid file is kept byte for byte: after a key rotation it holds more than one key,
    # and dropping any would make the Secrets written with it unreadable.
    fix_mode(path)
    return "kept"


# --------------------------------------------------------------------------- Weave Net


def ensure_weave_password(path: Path) -> str:
    """Weave Net's mesh password, generated once and then kept: every peer must hold the same
    one, and a new one would split the mesh until every node restarted with it."""
    try:
        current = path.read_text().strip()
    except OSError:
        current = ""
    if len(current) >= 32:
        fix_mode(path)
        return "kept"
    if path.exists():
        raise PkiError(f"{path} holds no usable Weave password (32 or more characters). Fix: restore "
                       "it from your backup, or delete it to make a new one (every weave-net pod then "
                       "restarts with it).")
    write_private(path, (secrets.token_urlsafe(32) + "\n").encode())
    return "created"
