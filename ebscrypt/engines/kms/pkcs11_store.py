"""Root keys inside a PKCS#11 token (an HSM; SoftHSM2 in tests): ``--key-store pkcs11:…``.

Binding: **python-pkcs11** (PyPI ``python-pkcs11`` >= 0.8, the ``[hsm]`` extra). Both it and
PyKCS11 install as cp311 manylinux wheels on this Python; python-pkcs11 was chosen for its
typed AES-GCM parameters (``GCMParams``), dict key templates instead of SWIG
``CK_ATTRIBUTE`` lists, one exception class per ``CKR_*`` (a wrong PIN, a missing token, a
lost session are told apart without comparing return codes), and active maintenance (0.10,
2025). Its one catch: it calls ``C_Initialize(NULL)``, which tells the library the
application makes no concurrent calls, so ebscrypt serializes its calls into the library
(one lock per process; see ``_LIBRARY_LOCK``).

What the token holds: AES-256 secret keys with ``CKA_LABEL`` = the URI's ``object`` and an
8-byte big-endian generation number as ``CKA_ID``, made by the token (``C_GenerateKey``) with
``CKA_TOKEN``, ``CKA_PRIVATE``, ``CKA_SENSITIVE`` true and ``CKA_EXTRACTABLE`` false; the
current root key is the highest id (a rotation adds the next one). Their value never exists
in this process. Wrapping is done by the token:

* ``CKM_AES_GCM`` (``C_Encrypt``/``C_Decrypt``), 96-bit random IV, 128-bit tag,
  ``ebscrypt-kms-material:<key id>/<material id>`` as AAD; blob body ``iv || ct || tag``;
* else ``CKM_AES_KEY_WRAP_PAD`` (RFC 5649, ``C_WrapKey`` of a session-only generic secret),
  where the mechanism has no AAD: the wrapped value starts with SHA-256(AAD)[:16] and the
  material length, checked on unwrap. ``?x-mechanism=aes-key-wrap-pad`` forces it.

The URI (RFC 7512): path ``token``, ``object``, optional ``id`` (pin one root object);
query ``module-path`` (required), ``pin-value`` or ``pin-source=file:PATH``, vendor
``x-mechanism``. A row's ``wrapped_by`` is ``pkcs11:token=…;object=…;id=%00…`` (no module,
no PIN), so the same token reached through another module path still matches.

Sessions: one logged-in read-write session opened at start and kept (PKCS#11 login state is
per application, so it keeps every other session logged in) and a pool of read-only
sessions, one taken per wrap/unwrap (never two operations on one session); calls into the
library are serialized per process (above). Unwrapped material is cached by the KMS engine,
so the token is called once per key material per process, not per request. A failed operation
discards its session; if the token then fails a health check the store reconnects (token
re-found, logged in again) and the call raises :class:`KeyStoreUnavailable` (retryable);
if the token is healthy the blob itself did not unwrap (:class:`RootKeyError`).
"""

from __future__ import annotations

import hashlib
import os
import queue
import struct
import threading
import time
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, TypeVar

from ebscrypt.engines.kms.keystore import (
    KeyStoreUnavailable,
    Mechanism,
    RootKeyError,
    material_aad,
    split_header,
    wrap_header,
)

try:  # the [hsm] extra
    import pkcs11
    from pkcs11 import Attribute, KeyType, ObjectClass
    from pkcs11 import Mechanism as CKM
    from pkcs11.exceptions import (
        NoSuchKey,
        NoSuchToken,
        PinIncorrect,
        PinLenRange,
        PKCS11Error,
        UserAlreadyLoggedIn,
    )
    from pkcs11.mechanisms import GCMParams
except ImportError:  # pragma: no cover - reported when a pkcs11: store is opened
    pkcs11 = None  # type: ignore[assignment]

T = TypeVar("T")

_PATH_ATTRS = {"token", "object", "id", "type", "serial", "manufacturer", "model", "slot-id",
               "slot-description", "slot-manufacturer", "library-description",
               "library-manufacturer", "library-version"}
_QUERY_ATTRS = {"module-path", "module-name", "pin-value", "pin-source", "x-mechanism"}
_MECHANISMS = {"aes-gcm": Mechanism.PKCS11_AES_GCM, "aes-key-wrap-pad": Mechanism.PKCS11_AES_KEY_WRAP_PAD}
_IV = 12
_TAG_BITS = 128
_KWP_DIGEST = 16
_REFRESH_SECONDS = 2.0
_REINIT_SECONDS = 0.2

# python-pkcs11 calls C_Initialize(NULL): the PKCS#11 library is told the application will
# not call it from several threads at once, and SoftHSM2 then takes no locks of its own
# (concurrent calls corrupted its heap in testing). So every call into the library from this
# process goes through this lock; concurrency between processes is the token's business.
_LIBRARY_LOCK = threading.RLock()


def pct(data: bytes) -> str:
    """RFC 7512 percent-encoding of every byte (the form of ``id``)."""
    return "".join(f"%{b:02x}" for b in data)


@dataclass(frozen=True)
class Pkcs11Uri:
    token: str
    label: str
    id: bytes | None
    serial: str | None
    module_path: str | None
    pin_value: str | None
    pin_source: str | None
    mechanism: str | None

    @classmethod
    def parse(cls, uri: str) -> "Pkcs11Uri":
        if not uri.startswith("pkcs11:"):
            raise RootKeyError(f"not a PKCS#11 URI: {uri!r}")
        path_text, _, query_text = uri[len("pkcs11:"):].partition("?")
        path: dict[str, str] = {}
        for part in filter(None, path_text.split(";")):
            name, eq, value = part.partition("=")
            if not eq or name not in _PATH_ATTRS:
                raise RootKeyError(f"PKCS#11 URI: unknown path attribute {name!r}")
            path[name] = value
        query: dict[str, str] = {}
        for part in filter(None, query_text.split("&")):
            name, eq, value = part.partition("=")
            if not eq or name not in _QUERY_ATTRS:
                raise RootKeyError(f"PKCS#11 URI: unknown query attribute {name!r}")
            query[name] = value
        for required in ("token", "object"):
            if required not in path:
                raise RootKeyError(f"PKCS#11 URI needs {required}=… (e.g. pkcs11:token=ebscrypt;object=ebscrypt-root)")
        if "pin-value" in query and "pin-source" in query:
            raise RootKeyError("PKCS#11 URI: give pin-value or pin-source, not both")
        mechanism = query.get("x-mechanism")
        if mechanism is not None and mechanism not in _MECHANISMS:
            raise RootKeyError(f"PKCS#11 URI: x-mechanism must be one of {', '.join(_MECHANISMS)}")
        unq = urllib.parse.unquote
        return cls(
            token=unq(path["token"]),
            label=unq(path["object"]),
            id=urllib.parse.unquote_to_bytes(path["id"]) if "id" in path else None,
            serial=unq(path["serial"]) if "serial" in path else None,
            module_path=unq(query["module-path"]) if "module-path" in query else None,
            pin_value=unq(query["pin-value"]) if "pin-value" in query else None,
            pin_source=unq(query["pin-source"]) if "pin-source" in query else None,
            mechanism=mechanism,
        )

    def ref(self, key_id: bytes, serial: str | None = None) -> str:
        """The name of one root object, as stored in ``wrapped_by``: token label and serial
        number (two tokens of one name are told apart), object label and id."""
        q = urllib.parse.quote
        serial = serial or self.serial
        ser = f";serial={q(serial, safe='')}" if serial else ""
        return f"pkcs11:token={q(self.token, safe='')}{ser};object={q(self.label, safe='')};id={pct(key_id)}"

    def display(self) -> str:
        """The URI without secrets (for logs, status and the audit trail)."""
        q = urllib.parse.quote
        text = f"pkcs11:token={q(self.token, safe='')};object={q(self.label, safe='')}"
        if self.id is not None:
            text += f";id={pct(self.id)}"
        if self.module_path:
            text += f"?module-path={q(self.module_path, safe='/')}"
        return text

    def pin(self) -> str | None:
        if self.pin_value is not None:
            return self.pin_value
        if self.pin_source is None:
            return None
        source = self.pin_source
        path = Path(source[len("file:"):] if source.startswith("file:") else source)
        try:
            return path.read_text().rstrip("\r\n")
        except OSError as exc:
            raise RootKeyError(f"cannot read the PKCS#11 PIN from {path}: {exc.strerror}") from None


def _id_order(key_id: bytes) -> tuple[int, bytes]:
    return len(key_id), key_id


class _Session:
    """One pooled session and the root key objects found in it (handles per session)."""

    def __init__(self, session: Any, generation: int) -> None:
        self.session = session
        self.generation = generation
        self.keys: dict[bytes, Any] = {}

    def key(self, label: str, key_id: bytes) -> Any:
        k = self.keys.get(key_id)
        if k is None:
            k = self.session.get_key(object_class=ObjectClass.SECRET_KEY, label=label, id=key_id)
            self.keys[key_id] = k
        return k


class Pkcs11KeyStore:
    """A key store whose root keys live in a PKCS#11 token (see the module docstring)."""

    kind = "pkcs11"

    def __init__(self, uri: str) -> None:
        if pkcs11 is None:
            raise RootKeyError(
                "a pkcs11: key store needs the python-pkcs11 package: pip install 'ebscrypt[hsm]'"
            )
        self.conf = Pkcs11Uri.parse(uri)
        if not self.conf.module_path:
            raise RootKeyError("PKCS#11 URI needs ?module-path=/path/to/module.so (e.g. libsofthsm2.so)")
        self.uri = self.conf.display()
        self._lock = _LIBRARY_LOCK
        self._pool: queue.SimpleQueue[_Session] = queue.SimpleQueue()
        self._generation = 0  # bumped per reconnect: sessions of an older one are dropped
        self._login: Any = None
        self._token: Any = None
        try:
            with self._lock:
                self._lib = pkcs11.lib(self.conf.module_path)
        except Exception as exc:  # the module cannot be loaded (OSError, RuntimeError, PKCS11Error)
            raise RootKeyError(f"cannot load the PKCS#11 module {self.conf.module_path}: {exc}") from None
        with self._lock:
            self._connect()
            self.mechanism = self._choose_mechanism()
        self._root_ids: list[bytes] = []
        self._refreshed = 0.0
        self._reinitialized = 0.0
        try:
            self.refresh()
        except KeyStoreUnavailable as exc:
            raise RootKeyError(str(exc)) from None

    # ------------------------------------------------------------------ connection

    def _connect(self) -> None:
        """Find the token and log in (one kept read-write session). RootKeyError: why not."""
        try:
            if self.conf.serial:
                token = self._lib.get_token(token_label=self.conf.token, token_serial=self.conf.serial.encode())
            else:
                token = self._lib.get_token(token_label=self.conf.token)
        except NoSuchToken:
            raise RootKeyError(
                f"no PKCS#11 token labelled {self.conf.token!r} in {self.conf.module_path} "
                "(token not initialized or HSM not reachable; for SoftHSM2 check SOFTHSM2_CONF)"
            ) from None
        except PKCS11Error as exc:
            raise RootKeyError(f"PKCS#11 token {self.conf.token!r}: {type(exc).__name__} {exc}".rstrip()) from None
        pin = self.conf.pin()
        if pin is None:
            raise RootKeyError("PKCS#11 URI needs the user PIN: pin-source=file:PATH (or pin-value=…)")
        try:
            session = token.open(user_pin=pin, rw=True)
        except UserAlreadyLoggedIn:  # another store object of this process logged in already
            session = token.open(rw=True)
        except (PinIncorrect, PinLenRange):
            raise RootKeyError(f"wrong PIN for PKCS#11 token {self.conf.token!r}") from None
        except PKCS11Error as exc:
            raise RootKeyError(
                f"cannot log in to PKCS#11 token {self.conf.token!r}: {type(exc).__name__} {exc}".rstrip()
            ) from None
        self._token = token
        self.serial = bytes(token.serial).decode(errors="replace").strip() or None
        self._login = session
        self._generation += 1

    def _choose_mechanism(self) -> Mechanism:
        if self.conf.mechanism:
            return _MECHANISMS[self.conf.mechanism]
        try:
            available = set(self._token.slot.get_mechanisms())
        except PKCS11Error:
            available = set()
        if CKM.AES_GCM in available:
            return Mechanism.PKCS11_AES_GCM
        if CKM.AES_KEY_WRAP_PAD in available:
            return Mechanism.PKCS11_AES_KEY_WRAP_PAD
        raise RootKeyError(f"PKCS#11 token {self.conf.token!r} supports neither CKM_AES_GCM nor CKM_AES_KEY_WRAP_PAD")

    def _reconnect(self) -> None:
        with self._lock:
            self._drop_sessions()
            try:
                self._connect()
            except RootKeyError:
                # The module may keep a stale view of its slots (a token pulled out and put
                # back): start it afresh, at most every 0.2 s. Every session of this
                # process ends; they are opened again on use.
                if time.monotonic() - self._reinitialized < _REINIT_SECONDS:
                    raise
                self._reinitialized = time.monotonic()
                try:
                    self._lib.reinitialize()
                except PKCS11Error as exc:
                    raise KeyStoreUnavailable(f"PKCS#11 module restart failed: {type(exc).__name__}") from None
                self._connect()
            self.refresh()

    def _drop_sessions(self) -> None:
        while True:
            try:
                s = self._pool.get_nowait()
            except queue.Empty:
                break
            try:
                s.session.close()
            except Exception:  # a session of a removed token: nothing to close
                pass
        if self._login is not None:
            try:
                self._login.close()
            except Exception:
                pass
            self._login = None

    def close(self) -> None:
        with self._lock:
            self._drop_sessions()

    def _take(self) -> _Session:
        while True:
            try:
                s = self._pool.get_nowait()
            except queue.Empty:
                break
            if s.generation == self._generation:
                return s
            try:  # a session from before a reconnect
                s.session.close()
            except Exception:
                pass
        with self._lock:
            if self._login is None:
                self._connect()
            return _Session(self._token.open(), self._generation)

    def _healthy(self) -> bool:
        with self._lock:
            try:
                s = self._take()
                s.session.get_key(object_class=ObjectClass.SECRET_KEY, label=self.conf.label, id=self.current_id)
            except Exception:
                return False
            self._pool.put(s)
            return True

    def _attempt(self, fn: Callable[[_Session], T]) -> tuple[bool, T | BaseException]:
        """(True, result) or (False, the error) of ``fn`` on a pooled session."""
        with self._lock:
            try:
                s = self._take()
            except (RootKeyError, PKCS11Error) as exc:
                return False, exc
            try:
                out = fn(s)
            except (PKCS11Error, NoSuchKey) as exc:
                try:
                    s.session.close()
                except Exception:
                    pass
                return False, exc
            self._pool.put(s)
            return True, out

    def _run(self, what: str, fn: Callable[[_Session], T], *, data_error: str | None = None) -> T:
        """``fn`` on a pooled session. On a failure: if the call is an unwrap
        (``data_error``) and the token is healthy, the blob is bad (RootKeyError); else the
        store reconnects and, if that works, tries once more; still failing:
        KeyStoreUnavailable (retryable)."""
        ok, out = self._attempt(fn)
        if ok:
            return out  # type: ignore[return-value]
        if data_error is not None and self._healthy():
            raise RootKeyError(data_error)
        try:
            self._reconnect()
        except (RootKeyError, KeyStoreUnavailable) as exc:
            out = exc
        else:
            ok, out = self._attempt(fn)
            if ok:
                return out  # type: ignore[return-value]
            if data_error is not None and self._healthy():
                raise RootKeyError(data_error)
        raise KeyStoreUnavailable(
            f"PKCS#11 key store {self.uri} unavailable during {what}: {type(out).__name__} {out}".rstrip()
        )

    # ----------------------------------------------------------------- root objects

    def refresh(self) -> None:
        """Re-read which root objects the token holds (init/rotate by another process)."""
        attrs = {Attribute.CLASS: ObjectClass.SECRET_KEY, Attribute.LABEL: self.conf.label}
        if self.conf.id is not None:
            attrs[Attribute.ID] = self.conf.id
        with self._lock:
            if self._login is None:
                try:
                    self._connect()
                except RootKeyError as exc:
                    raise KeyStoreUnavailable(str(exc)) from None
            try:
                ids = {bytes(o[Attribute.ID]) for o in self._login.get_objects(attrs)}
            except PKCS11Error as exc:
                raise KeyStoreUnavailable(
                    f"PKCS#11 key store {self.uri}: cannot list root keys: {type(exc).__name__} {exc}".rstrip()
                ) from None
            self._root_ids = sorted(ids, key=_id_order)
            self._refreshed = time.monotonic()

    @property
    def root_ids(self) -> list[bytes]:
        return list(self._root_ids)

    @property
    def current_id(self) -> bytes:
        if not self._root_ids:
            raise RootKeyError(
                f"PKCS#11 token {self.conf.token!r} holds no root key {self.conf.label!r}: "
                f"run `ebscrypt keystore init --key-store '{self.uri}?…'`"
            )
        return self._root_ids[-1]

    def current_ref(self) -> str:
        return self.conf.ref(self.current_id, self.serial)

    def _ref_id(self, ref: str | None) -> bytes | None:
        """The id of ``ref`` if it names a root object of this token and label."""
        if ref is None or not ref.startswith("pkcs11:"):
            return None
        try:
            other = Pkcs11Uri.parse(ref)
        except RootKeyError:
            return None
        if other.token != self.conf.token or other.label != self.conf.label or other.id is None:
            return None
        if other.serial != self.serial:  # another token of the same name
            return None
        return other.id

    def holds(self, ref: str | None) -> bool:
        key_id = self._ref_id(ref)
        return key_id is not None and key_id in self._root_ids

    def create_root(self) -> bytes:
        """Generate the next root key inside the token; returns its id."""
        with self._lock:
            self.refresh()
            if self.conf.id is not None:
                if self._root_ids:
                    return self._root_ids[-1]
                new_id = self.conf.id
            else:
                last = self._root_ids[-1] if self._root_ids else b"\0" * 8
                new_id = struct.pack(">Q", int.from_bytes(last[-8:], "big") + 1)
            try:
                self._login.generate_key(
                    KeyType.AES, 256, label=self.conf.label, id=new_id, store=True,
                    template={
                        Attribute.TOKEN: True,
                        Attribute.PRIVATE: True,
                        Attribute.SENSITIVE: True,
                        Attribute.EXTRACTABLE: False,
                        Attribute.ENCRYPT: True,
                        Attribute.DECRYPT: True,
                        Attribute.WRAP: True,
                        Attribute.UNWRAP: True,
                        Attribute.MODIFIABLE: False,
                    },
                )
            except PKCS11Error as exc:
                raise RootKeyError(f"the token refused to generate a root key: {type(exc).__name__} {exc}".rstrip()) from None
            self.refresh()
            return new_id

    def destroy_root(self, ref: str) -> None:
        """Destroy a root object (only once no row refers to it: the caller checks)."""
        key_id = self._ref_id(ref)
        if key_id is None or key_id not in self._root_ids:
            raise RootKeyError(f"{ref} is not a root key of {self.uri}")
        if key_id == self.current_id:
            raise RootKeyError(f"{ref} is the current root key")
        with self._lock:
            key = self._login.get_key(object_class=ObjectClass.SECRET_KEY, label=self.conf.label, id=key_id)
            key.destroy()
            self._drop_sessions()  # pooled sessions cache the destroyed handle
            self._connect()
            self.refresh()

    def root_ref(self, key_id: bytes) -> str:
        return self.conf.ref(key_id, self.serial)

    def describe_root(self, key_id: bytes) -> dict[str, Any]:
        """The security attributes of a root object (for status)."""
        def read(s: _Session) -> dict[str, Any]:
            k = s.key(self.conf.label, key_id)
            return {
                "sensitive": bool(k[Attribute.SENSITIVE]),
                "extractable": bool(k[Attribute.EXTRACTABLE]),
                "token": bool(k[Attribute.TOKEN]),
            }

        return self._run("reading a root key's attributes", read)

    # ------------------------------------------------------------------------ wrap

    def wrap(self, key_id: str, material_id: str, material: bytes) -> tuple[str, bytes]:
        # Wraps are rare (CreateKey, a key rotation): re-read the root objects (at most
        # every few seconds), so a server wraps under the root key a `keystore rotate` made
        # while it ran. A failed re-read keeps the ids already known (the wrap itself then
        # shows whether the token is there).
        if time.monotonic() - self._refreshed > _REFRESH_SECONDS:
            try:
                self.refresh()
            except KeyStoreUnavailable:
                if not self._root_ids:
                    raise
        root_id = self.current_id
        aad = material_aad(key_id, material_id)
        mechanism = self.mechanism
        label = self.conf.label

        def gcm(s: _Session) -> bytes:
            iv = os.urandom(_IV)
            ct = s.key(label, root_id).encrypt(
                material, mechanism=CKM.AES_GCM, mechanism_param=GCMParams(iv, aad, _TAG_BITS)
            )
            return iv + bytes(ct)

        def kwp(s: _Session) -> bytes:
            inner = hashlib.sha256(aad).digest()[:_KWP_DIGEST] + struct.pack(">I", len(material)) + material
            secret = s.session.create_object({
                Attribute.CLASS: ObjectClass.SECRET_KEY,
                Attribute.KEY_TYPE: KeyType.GENERIC_SECRET,
                Attribute.VALUE: inner,
                Attribute.TOKEN: False,
                Attribute.SENSITIVE: False,
                Attribute.EXTRACTABLE: True,
            })
            try:
                return bytes(s.key(label, root_id).wrap_key(secret, mechanism=CKM.AES_KEY_WRAP_PAD))
            finally:
                secret.destroy()

        body = self._run("wrap", gcm if mechanism is Mechanism.PKCS11_AES_GCM else kwp)
        return self.conf.ref(root_id, self.serial), wrap_header(mechanism) + body

    def unwrap(self, key_id: str, material_id: str, wrapped: bytes, ref: str | None) -> bytes:
        root_id = self._ref_id(ref)
        if root_id is None or root_id not in self._root_ids:
            self.refresh()  # a root made by another process's rotation since start
            if root_id is None or root_id not in self._root_ids:
                raise RootKeyError(f"key material of {key_id} is wrapped by {ref}, which {self.uri} does not hold")
        mechanism, body = split_header(wrapped)
        aad = material_aad(key_id, material_id)
        label = self.conf.label
        bad = f"key material of {key_id} does not unwrap under {ref}"

        def gcm(s: _Session) -> bytes:
            iv, ct = body[:_IV], body[_IV:]
            return bytes(s.key(label, root_id).decrypt(
                ct, mechanism=CKM.AES_GCM, mechanism_param=GCMParams(iv, aad, _TAG_BITS)
            ))

        def kwp(s: _Session) -> bytes:
            secret = s.key(label, root_id).unwrap_key(
                ObjectClass.SECRET_KEY, KeyType.GENERIC_SECRET, body, mechanism=CKM.AES_KEY_WRAP_PAD,
                store=False, template={Attribute.SENSITIVE: False, Attribute.EXTRACTABLE: True},
            )
            try:
                return bytes(secret[Attribute.VALUE])
            finally:
                secret.destroy()

        if mechanism is Mechanism.PKCS11_AES_GCM:
            return self._run("unwrap", gcm, data_error=bad)
        if mechanism is Mechanism.PKCS11_AES_KEY_WRAP_PAD:
            inner = self._run("unwrap", kwp, data_error=bad)
            # Some tokens (SoftHSM2) return the RFC 5649 padding with the value: the length
            # recorded inside says where the material ends.
            digest, (length,) = inner[:_KWP_DIGEST], struct.unpack(">I", inner[_KWP_DIGEST:_KWP_DIGEST + 4])
            material = inner[_KWP_DIGEST + 4:_KWP_DIGEST + 4 + length]
            if digest != hashlib.sha256(aad).digest()[:_KWP_DIGEST] or len(material) != length:
                raise RootKeyError(bad)
            return material
        raise RootKeyError(f"key material of {key_id} was wrapped by {mechanism.name}, not a PKCS#11 key store")
