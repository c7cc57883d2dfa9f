"""Who may read and who may write: the keys an operator configures, stored hashed.

The access file (`--access FILE`, else $INDEXER_ACCESS, else `access.json` in the working folder)
holds at most two keys, `write` and `read`, each as a salted scrypt hash; the keys themselves are
never stored, printed or logged. The rules, for the HTTP API and the page alike:

- writing (upload, remove, rebuild, build) needs the write key when one is configured; with none,
  it is allowed only to a server bound to a loopback address (127.0.0.1, ::1, localhost) and
  refused everywhere else: a page or API opened to a network is read-only until a key is set;
- reading needs the read key (or the write key) when a read key is configured, else nothing.

`python -m indexer access set-write-key` (or `set-read-key`) sets a key, read from stdin or a
prompt; `access show` says which keys are set; `access clear write|read` removes one.
"""
from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import os
import secrets
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

from .errors import IndexerError

ACCESS_ENV = "INDEXER_ACCESS"
DEFAULT_ACCESS = Path("access.json")
RIGHTS = ("read", "write")
MIN_KEY_CHARS = 12
SCRYPT = {"n": 2 ** 14, "r": 8, "p": 1}  # 16 MB, ~40 ms a check: slow to guess, checked once per key and process
LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost"})


class AccessError(IndexerError):
    """A request without the right it needs; `status` is its HTTP status (401 no key, 403 refused)."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


def access_path(given: str | Path | None = None) -> Path:
    """The access file: the one given, else $INDEXER_ACCESS, else access.json here."""
    return Path(given or os.environ.get(ACCESS_ENV) or DEFAULT_ACCESS)


def is_loopback(host: str | None) -> bool:
    """True for a bind address only this machine can reach; "", 0.0.0.0 and :: are every interface."""
    host = (host or "").strip().strip("[]").lower()
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def hash_key(key: str, salt: bytes | None = None) -> dict:
    """The stored form of a key: scrypt parameters, salt and hash (hex)."""
    salt = salt or secrets.token_bytes(16)
    digest = hashlib.scrypt(key.encode("utf-8"), salt=salt, dklen=32, **SCRYPT)
    return {"scheme": "scrypt", **SCRYPT, "salt": salt.hex(), "hash": digest.hex()}


def key_matches(key: str, record: dict) -> bool:
    """Whether a key hashes to the stored record (compared in constant time)."""
    try:
        digest = hashlib.scrypt(key.encode("utf-8"), salt=bytes.fromhex(record["salt"]), dklen=32,
                                n=int(record["n"]), r=int(record["r"]), p=int(record["p"]))
        return hmac.compare_digest(digest, bytes.fromhex(record["hash"]))
    except (KeyError, ValueError, TypeError):
        return False


def read_hashes(path: Path) -> dict[str, dict]:
    """right → stored hash, from the access file (empty when there is none)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise IndexerError(f"{path}: not a readable access file ({exc}); set the keys again") from exc
    keys = data.get("keys", {}) if isinstance(data, dict) else {}
    return {right: keys[right] for right in RIGHTS if isinstance(keys.get(right), dict)}


def _write_hashes(path: Path, hashes: dict[str, dict]) -> None:
    """Replace the access file in one rename, readable by its owner only."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump({"format": 1, "keys": hashes}, fh, indent=1)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def set_key(path: Path, right: str, key: str) -> None:
    """Store the hash of a new key for a right (replacing the old one)."""
    key = key.strip()
    if right not in RIGHTS:
        raise IndexerError(f"unknown right {right!r}; choose read or write")
    if len(key) < MIN_KEY_CHARS:
        raise IndexerError(f"a key needs at least {MIN_KEY_CHARS} characters")
    hashes = read_hashes(path)
    other = next((r for r in RIGHTS if r != right), "")
    if other in hashes and key_matches(key, hashes[other]):
        raise IndexerError(f"the {right} key must differ from the {other} key")
    _write_hashes(path, {**hashes, right: hash_key(key)})


def clear_key(path: Path, right: str) -> bool:
    """Remove a right's key; False when none was set."""
    if right not in RIGHTS:
        raise IndexerError(f"unknown right {right!r}; choose read or write")
    hashes = read_hashes(path)
    if right not in hashes:
        return False
    del hashes[right]
    _write_hashes(path, hashes)
    return True


@dataclass
class Access:
    """The access rules of one server (API or page) bound to `bind`, keys from `path`.

    The file is read again when it changes, so a key set while the server runs applies at once.
    A key that matched is remembered (as a keyed digest, in memory) so that scrypt runs once per
    key, not once per request; a wrong key pays scrypt every time.
    """

    path: Path
    bind: str

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._stamp: tuple | None = None
        self._hashes: dict[str, dict] = {}
        self._pepper = secrets.token_bytes(32)
        self._known: dict[bytes, frozenset[str]] = {}

    @property
    def hashes(self) -> dict[str, dict]:
        try:
            st = self.path.stat()
            stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
        except FileNotFoundError:
            stamp = None
        with self._lock:
            if stamp != self._stamp:
                self._hashes = read_hashes(self.path) if stamp else {}
                self._stamp, self._known = stamp, {}
            return self._hashes

    @property
    def loopback(self) -> bool:
        return is_loopback(self.bind)

    def configured(self, right: str) -> bool:
        return right in self.hashes

    def rights_of(self, key: str | None) -> frozenset[str]:
        """The rights a key gives: the write key reads too; no key, or a wrong one, gives none."""
        if not key:
            return frozenset()
        hashes = self.hashes
        tag = hmac.new(self._pepper, key.encode("utf-8"), hashlib.sha256).digest()
        with self._lock:
            known = self._known.get(tag)
        if known is not None:
            return known
        rights = frozenset({"read", "write"} if "write" in hashes and key_matches(key, hashes["write"])
                           else {"read"} if "read" in hashes and key_matches(key, hashes["read"]) else ())
        if rights:
            with self._lock:
                if len(self._known) > 256:
                    self._known.clear()
                self._known[tag] = rights
        return rights

    def check(self, right: str, key: str | None) -> None:
        """Raise AccessError unless a request carrying `key` (None: none) may `right`."""
        if right == "write" and not self.configured("write"):
            if self.loopback:
                return
            raise AccessError(f"this server is read-only: it listens on {self.bind or 'every interface'} "
                              "and its operator has set no write key", 403)
        if right == "read" and not self.configured("read"):
            return
        if not key:
            raise AccessError(f"{'writing' if right == 'write' else 'reading'} needs the {right} key: "
                              "send it as `Authorization: Bearer KEY` or `X-API-Key: KEY`", 401)
        if right not in self.rights_of(key):
            raise AccessError(f"the key given does not allow {'writing' if right == 'write' else 'reading'}", 403)

    def allows(self, right: str, key: str | None) -> bool:
        try:
            self.check(right, key)
            return True
        except AccessError:
            return False
