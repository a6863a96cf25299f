"""Key material: the workspace master key and keys derived from it per purpose.

The master key comes from ``MICRODB_MASTER_KEY`` (hex or urlsafe base64 of 32 bytes)
or from the workspace key file created by ``microdb init`` (mode 0600). It is read
once, here, and nowhere else. Every other key is derived with HKDF-SHA256 under a
purpose label, so a token key can never decrypt the store and vice versa.
"""

from __future__ import annotations

import base64
import binascii
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from microdb.errors import KeyMaterialError

MASTER_KEY_ENV = "MICRODB_MASTER_KEY"
KEY_BYTES = 32


def _decode(text: str, where: str) -> bytes:
    text = text.strip()
    for decode in (bytes.fromhex, lambda s: base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))):
        try:
            raw = decode(text)
        except (ValueError, binascii.Error):
            continue
        if len(raw) == KEY_BYTES:
            return raw
    raise KeyMaterialError(f"{where}: master key must be 32 bytes as 64 hex digits or urlsafe base64")


def generate_key_file(path: Path) -> None:
    """Write a new random master key to ``path`` readable by the owner only."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(os.urandom(KEY_BYTES).hex() + "\n")


def load_master_key(key_file: Path) -> bytes:
    """Return the master key from the environment, else from ``key_file``; never a default."""
    env = os.environ.get(MASTER_KEY_ENV)
    if env:
        return _decode(env, MASTER_KEY_ENV)
    if not key_file.exists():
        raise KeyMaterialError(
            f"no master key: set {MASTER_KEY_ENV} or create the key file {key_file} (microdb init does)"
        )
    mode = stat.S_IMODE(key_file.stat().st_mode)
    if mode & 0o077:
        raise KeyMaterialError(f"{key_file}: key file must not be readable by group or others (mode {mode:o}); chmod 600 it")
    return _decode(key_file.read_text(), str(key_file))


@dataclass
class Keyring:
    """Derives and caches purpose keys from one master key."""

    master: bytes
    _cache: dict[str, bytes] = field(default_factory=dict, repr=False)

    def derive(self, purpose: str, length: int = KEY_BYTES) -> bytes:
        """Key for ``purpose`` (e.g. ``"store"``, ``"token:hmac"``), stable for a master key."""
        ck = f"{purpose}/{length}"
        key = self._cache.get(ck)
        if key is None:
            key = HKDF(algorithm=hashes.SHA256(), length=length, salt=b"microdb/v1", info=purpose.encode()).derive(
                self.master
            )
            self._cache[ck] = key
        return key

    def fingerprint(self) -> str:
        """Short public identifier of the master key (to detect a wrong key, never to recover it)."""
        return self.derive("fingerprint", 8).hex()
