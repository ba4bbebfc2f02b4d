"""The cluster's secrets that are not certificates, kept in the PKI folder beside them.

The encryption-at-rest config (the key that seals every Secret in etcd) and Weave Net's mesh
password: each generated once, written 0600, and then kept byte for byte, since a new one
would make data unreadable or split the mesh. (Named so, not ``secrets``: that is the
standard library module used here to generate them.)
"""

from __future__ import annotations

import base64
import hashlib
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


# What the config encrypts, and where etcd keeps it (every value under the prefix is rewritten
# and counted by a key rotation, kthw/key_rotation.py).
ENCRYPTED_RESOURCES = {"secrets": "/registry/secrets/"}
PROVIDER = "secretbox"  # XSalsa20 + Poly1305, recommended over aescbc

EncryptionKey = tuple[str, str]  # (name, base64 of 32 random bytes); the name is written into every value


def new_key(name: str) -> EncryptionKey:
    return name, base64.b64encode(secrets.token_bytes(32)).decode()


def encryption_config(keys: list[EncryptionKey]) -> str:
    """EncryptionConfiguration for the apiserver: the first key seals what is written, every key
    opens what it sealed; identity last, so data written before encryption was on still reads."""
    doc = {
        "apiVersion": "apiserver.config.k8s.io/v1",
        "kind": "EncryptionConfiguration",
        "resources": [
            {
                "resources": list(ENCRYPTED_RESOURCES),
                "providers": [
                    {PROVIDER: {"keys": [{"name": n, "secret": s} for n, s in keys]}},
                    {"identity": {}},
                ],
            }
        ],
    }
    return yaml.safe_dump(doc, sort_keys=False)


def encryption_keys(text: str | bytes) -> list[EncryptionKey] | None:
    """The keys of an encryption config in its order (the writing key first), or None when it is
    not one this module wrote (unreadable, another provider, a key that is not 32 bytes)."""
    try:
        doc = yaml.safe_load(text)
        keys = [(k["name"], k["secret"]) for k in doc["resources"][0]["providers"][0][PROVIDER]["keys"]]
        if keys and all(isinstance(n, str) and len(base64.b64decode(s, validate=True)) == 32 for n, s in keys):
            return keys
    except (yaml.YAMLError, KeyError, IndexError, TypeError, ValueError, AttributeError):
        return None
    return None


def read_encryption_keys(path: Path) -> list[EncryptionKey] | None:
    try:
        return encryption_keys(path.read_bytes())
    except OSError:
        return None


def encryption_secret(path: Path) -> str | None:
    """The writing key inside an existing encryption config, or None if absent/unreadable."""
    keys = read_encryption_keys(path)
    return keys[0][1] if keys else None


def write_encryption_config(path: Path, keys: list[EncryptionKey]) -> None:
    write_private(path, encryption_config(keys).encode())


def retire_encryption_config(pki_dir: Path, folder: str) -> Path:
    """A copy of the config as it is (before a key rotation drops keys) in ``<pki>/<folder>/``:
    the keys a host of this cluster may still hold (:func:`known_configs`)."""
    (pki_dir / folder).mkdir(mode=0o700, exist_ok=True)
    write_private(dest := pki_dir / folder / ENCRYPTION_CONFIG, (pki_dir / ENCRYPTION_CONFIG).read_bytes())
    return dest


def known_configs(pki_dir: Path) -> set[str]:
    """sha256 of every encryption config a host of this cluster may hold: one or two of the keys
    of the current config and of those earlier key rotations retired, in either order (a key
    rotation's states), and the current file itself."""
    files = [pki_dir / ENCRYPTION_CONFIG, *sorted(pki_dir.glob(f"*/{ENCRYPTION_CONFIG}"))]
    keys = list(dict.fromkeys(k for path in files for k in read_encryption_keys(path) or []))
    configs = [[a] for a in keys] + [[a, b] for a in keys for b in keys if a != b]
    known = {hashlib.sha256(encryption_config(c).encode()).hexdigest() for c in configs}
    if (current := pki_dir / ENCRYPTION_CONFIG).exists():
        known.add(hashlib.sha256(current.read_bytes()).hexdigest())
    return known


def ensure_encryption_config(path: Path) -> str:
    """Generate the key once; afterwards keep it (losing it makes every Secret unreadable)."""
    if read_encryption_keys(path) is None and path.exists():
        raise PkiError(f"{path} exists but holds no usable {PROVIDER} key. Replacing it would make "
                       "every Secret in etcd unreadable. Fix: restore it from your backup, or delete "
                       "it only for a cluster whose etcd holds no Secrets yet.")
    if not path.exists():
        write_encryption_config(path, [new_key("key1")])
        return "created"
    # A valid file is kept byte for byte: during a key rotation it holds more than one key,
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
