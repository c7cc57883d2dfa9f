"""Who may read, who may write, and what each reader may see: the keys an operator configures,
stored hashed.

The access file (`--access FILE`, else $INDEXER_ACCESS, else `access.json` in the working folder)
holds named keys, each a salted scrypt hash with its rights and, for a reader, its scope: filter
expressions in the syntax of indexer.filters (`folder=教育科`) that every document it is shown must
meet. The keys themselves are never stored, and shown only once, where they are made. Names:

    write    the write key (`access set-write-key`): reads and writes everything
    read     the read key (`access set-read-key`): reads everything
    NAME     a reader (`access add-reader NAME --where …`): reads the documents its filters allow

The rules, for the HTTP API and the page alike, on every address (loopback is not exempt):

- writing (upload, remove, build, rebuild) needs the write key. `serve` and `page` make one at
  their first start when there is none (`ensure_write_key`) and show it once on the terminal;
- reading needs a key once any key other than the write key exists (the read key or a reader);
  until then anyone who reaches the server reads everything;
- a reader bound to filters sees only what they allow (indexer.engine.ScopedEngine).

A generated key is `ID.SECRET`: its ID names its record, so checking it costs one scrypt (~40 ms)
however many keys there are; a key typed by the operator is checked against the typed keys. A key
that matched is remembered per process, so scrypt runs once per key, not once per request.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import hmac
import json
import os
import secrets
import tempfile
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from . import filters
from .errors import IndexerError, QueryError

ACCESS_ENV = "INDEXER_ACCESS"
DEFAULT_ACCESS = Path("access.json")
RIGHTS = ("read", "write")
RESERVED = {"write": frozenset(RIGHTS), "read": frozenset({"read"})}  # the names of the two unscoped keys
MIN_KEY_CHARS = 12
SCRYPT = {"n": 2 ** 14, "r": 8, "p": 1}  # 16 MB, ~40 ms a check: slow to guess, checked once per key and process
FORMAT = 2  # 1: at most the keys "write" and "read", without rights or scopes (still read)


class AccessError(IndexerError):
    """A request without the right it needs; `status` is its HTTP status (401 no key, 403 refused)."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Grant:
    """What a request may do: whose key it carried ("" for none), its rights, and its scope (the
    filters every document it is shown must meet; () for every document)."""

    name: str
    rights: frozenset[str]
    where: tuple[str, ...] = ()

    def may(self, right: str) -> bool:
        return right in self.rights


ANYONE = Grant("", frozenset({"read"}))  # reading while no reading key is configured
OPERATOR = Grant("write", RESERVED["write"])  # the write key, or the page's login link


@dataclass(frozen=True)
class KeyRecord:
    """One stored key: its hash (scrypt parameters, salt, digest), rights, scope, and the ID that a
    generated key starts with ("" for a key the operator typed)."""

    name: str
    rights: frozenset[str]
    where: tuple[str, ...]
    hashed: dict = field(repr=False)
    kid: str = ""

    @property
    def grant(self) -> Grant:
        return Grant(self.name, self.rights, self.where)

    def to_json(self) -> dict:
        return {**self.hashed, "rights": sorted(self.rights), "where": list(self.where), **({"id": self.kid} if self.kid else {})}


def access_path(given: str | Path | None = None) -> Path:
    """The access file: the one given, else $INDEXER_ACCESS, else access.json here."""
    return Path(given or os.environ.get(ACCESS_ENV) or DEFAULT_ACCESS)


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
    except (KeyError, ValueError, TypeError, UnicodeEncodeError):
        return False


def _record(name: str, data: dict) -> KeyRecord:
    """A stored key as read back; format 1's records carry no rights: their name gives them."""
    rights = frozenset(r for r in data.get("rights", RESERVED.get(name, ())) if r in RIGHTS)
    hashed = {k: v for k, v in data.items() if k not in ("rights", "where", "id")}
    return KeyRecord(name, rights, tuple(str(w) for w in data.get("where") or ()), hashed, str(data.get("id") or ""))


def read_keys(path: Path) -> dict[str, KeyRecord]:
    """name → stored key, from the access file (empty when there is none)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise IndexerError(f"{path}: not a readable access file ({exc}); set the keys again") from exc
    keys = data.get("keys", {}) if isinstance(data, dict) else {}
    return {str(name): _record(str(name), rec) for name, rec in keys.items() if isinstance(rec, dict)}


def _write_keys(path: Path, keys: dict[str, KeyRecord]) -> None:
    """Replace the access file in one rename, readable by its owner only."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump({"format": FORMAT, "keys": {name: rec.to_json() for name, rec in keys.items()}}, fh,
                      ensure_ascii=False, indent=1)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


@contextlib.contextmanager
def _changing(path: Path) -> Iterator[dict[str, KeyRecord]]:
    """The access file's keys, to change in place and write back, under a lock file beside it: a
    page and an API starting together make one write key, not two."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        keys = read_keys(path)
        before = dict(keys)
        yield keys
        if keys != before:
            _write_keys(path, keys)


def generate_key() -> tuple[str, str]:
    """(ID, key) of a new random key: `ID.SECRET`, 192 bits of secret."""
    kid = secrets.token_hex(4)
    return kid, f"{kid}.{secrets.token_urlsafe(24)}"


def _store(path: Path, name: str, rights: frozenset[str], where: tuple[str, ...], key: str, kid: str = "") -> None:
    """Store a key's hash under `name` (replacing that name's key); a key must differ from the others."""
    key = key.strip()
    if len(key) < MIN_KEY_CHARS:
        raise IndexerError(f"a key needs at least {MIN_KEY_CHARS} characters")
    with _changing(path) as keys:
        same = next((other for other, rec in keys.items() if other != name and key_matches(key, rec.hashed)), None)
        if same:
            raise IndexerError(f"the {name} key must differ from the {same} key")
        keys[name] = KeyRecord(name, rights, where, hash_key(key), kid)


def set_key(path: Path, right: str, key: str) -> None:
    """Store the hash of a new key for a right, `write` or `read` (replacing the old one)."""
    if right not in RIGHTS:
        raise IndexerError(f"unknown right {right!r}; choose read or write")
    _store(path, right, RESERVED[right], (), key)


def check_scope(where: Iterable[str]) -> tuple[str, ...]:
    """A reader's filters, parsed once to refuse a malformed one (QueryError, naming it)."""
    where = tuple(str(w).strip() for w in where if str(w).strip())
    if not where:
        raise QueryError("a reader needs at least one --where filter (e.g. folder=教育科); "
                         "`access set-read-key` makes a key that reads everything")
    filters.parse(where)
    return where


def add_reader(path: Path, name: str, where: Iterable[str], key: str | None = None) -> str:
    """Store a reader bound to filters; its key is the one given, else a new one (returned, to be
    shown once)."""
    name = " ".join(str(name).split())
    if not name or name in RESERVED:
        raise IndexerError(f"a reader needs a name other than {' or '.join(RESERVED)} (e.g. 教育科)")
    scope = check_scope(where)
    kid, made = ("", key) if key is not None else generate_key()
    _store(path, name, RESERVED["read"], scope, made, kid)
    return made


def remove_key(path: Path, name: str) -> bool:
    """Remove a key by name (write, read or a reader's); False when there was none."""
    with _changing(path) as keys:
        return keys.pop(name, None) is not None


def ensure_write_key(path: Path) -> str | None:
    """A new write key when the access file has none (its hash stored; the key returned, to be
    shown once), else None."""
    with _changing(path) as keys:
        if "write" in keys:
            return None
        kid, key = generate_key()
        keys["write"] = KeyRecord("write", RESERVED["write"], (), hash_key(key), kid)
        return key


def describe(path: Path) -> list[str]:
    """One line per key: its name, rights and scope (never the key or its hash)."""
    return [f"{rec.name}: {' and '.join(sorted(rec.rights, reverse=True)) or 'nothing'}"
            + (f", only where {' and '.join(rec.where)}" if rec.where else "")
            + (", generated" if rec.kid else "") for rec in read_keys(path).values()]


class Access:
    """The access rules of one server (API or page), keys from `path`.

    The file is read again when it changes, so a key set while the server runs applies at once.
    A key that matched is remembered (as a keyed digest, in memory) so that scrypt runs once per
    key, not once per request; a wrong key pays scrypt every time (and the servers count wrong
    keys against the client's address before they check them: indexer.guard)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._stamp: tuple | None = None
        self._keys: dict[str, KeyRecord] = {}
        self._pepper = secrets.token_bytes(32)
        self._known: dict[bytes, Grant] = {}

    @property
    def keys(self) -> dict[str, KeyRecord]:
        try:
            st = self.path.stat()
            stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
        except FileNotFoundError:
            stamp = None
        with self._lock:
            if stamp != self._stamp:
                self._keys = read_keys(self.path) if stamp else {}
                self._stamp, self._known = stamp, {}
            return self._keys

    def configured(self, right: str) -> bool:
        """Whether a key with this right exists."""
        return any(rec.rights >= {right} for rec in self.keys.values())

    def reading_locked(self) -> bool:
        """Whether reading needs a key: some key other than the write key exists."""
        return any(name != "write" for name in self.keys)

    def _tag(self, key: str) -> bytes:
        return hmac.new(self._pepper, key.encode("utf-8", "replace"), hashlib.sha256).digest()

    def known(self, key: str | None) -> Grant | None:
        """The grant of a key already checked by this process (no scrypt), else None."""
        if not key:
            return None
        self.keys  # noqa: B018 - reread the file if it changed (which forgets the keys checked)
        with self._lock:
            return self._known.get(self._tag(key))

    def grant_of(self, key: str | None) -> Grant | None:
        """The grant a key gives (None: no key, or a wrong one). A generated key is checked against
        its own record only; any other against the keys the operator typed."""
        if not key:
            return None
        grant = self.known(key)
        if grant is not None:
            return grant
        keys = self.keys.values()
        kid = key.split(".", 1)[0]
        candidates = [rec for rec in keys if rec.kid and rec.kid == kid] or [rec for rec in keys if not rec.kid]
        rec = next((rec for rec in candidates if key_matches(key, rec.hashed)), None)
        if rec is None:
            return None
        with self._lock:
            if len(self._known) > 256:
                self._known.clear()
            self._known[self._tag(key)] = rec.grant
        return rec.grant

    def check(self, right: str, key: str | None) -> Grant:
        """The grant of a request carrying `key` (None: none) that needs `right`; AccessError when
        it may not."""
        doing = "writing" if right == "write" else "reading"
        if right == "write" and not self.configured("write"):
            raise AccessError("writing needs the write key, and none is set: "
                              "`python -m indexer access set-write-key` sets one", 403)
        if right == "read" and not self.reading_locked():
            return self.grant_of(key) or ANYONE
        if not key:
            raise AccessError(f"{doing} needs a {'write' if right == 'write' else 'read'} key: "
                              "send it as `Authorization: Bearer KEY` or `X-API-Key: KEY`", 401)
        grant = self.grant_of(key)
        if grant is None or not grant.may(right):
            raise AccessError(f"the key given does not allow {doing}", 403)
        return grant

    def allows(self, right: str, key: str | None) -> bool:
        try:
            self.check(right, key)
            return True
        except AccessError:
            return False
