"""Bundle signatures: trust through a key, not a hash anyone can recompute.

`qc bundle sign BUNDLE --key PRIVATE` (on the workstation) writes `signature.json` into the bundle: an Ed25519
signature over its manifest, the sha256 of every other file in the folder by name. A box whose config names
`bundle_key` (the public key) loads a bundle only when that signature verifies against the files as they are
read: an unsigned bundle, a changed or added file, or another key's signature is refused at start, verify
and reload. Keys are PEM files made by `qc bundle keygen`; the private key never goes to the box.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from pathlib import Path

from edge.errors import EdgeError

__all__ = ["SIGNATURE", "keygen", "manifest", "public_key_id", "sign", "verify"]

SIGNATURE = "signature.json"


def _crypto():
    try:
        from cryptography.exceptions import InvalidSignature
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
    except ImportError as exc:
        raise EdgeError("bundle signatures need the cryptography package: pip install 'qc-inspect[edge]'") from exc
    return InvalidSignature, serialization, Ed25519PrivateKey, Ed25519PublicKey


def manifest(folder: Path, contents: dict[str, bytes] | None = None) -> bytes:
    """`sha256  name` per file of the bundle but the signature, sorted; `contents` gives bytes already read."""
    contents = contents or {}
    names = sorted(p.name for p in Path(folder).iterdir() if p.is_file() and p.name != SIGNATURE)
    lines = []
    for name in names:
        data = contents[name] if name in contents else (Path(folder) / name).read_bytes()
        lines.append(f"{hashlib.sha256(data).hexdigest()}  {name}\n")
    return "".join(lines).encode()


def key_id(public_key) -> str:
    _, serialization, _, _ = _crypto()
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def public_key_id(path: Path) -> str:
    """The id (sha256 prefix of the raw key) of a public key file, as `sign` records it."""
    return key_id(_load(path, private=False))


def _load(path: Path, private: bool):
    _, serialization, Ed25519PrivateKey, Ed25519PublicKey = _crypto()
    try:
        data = Path(path).read_bytes()
        key = (serialization.load_pem_private_key(data, password=None) if private
               else serialization.load_pem_public_key(data))
    except (OSError, ValueError, TypeError) as exc:
        kind = "private" if private else "public"
        raise EdgeError(f"{path}: not a readable Ed25519 {kind} key in PEM ({exc})") from None
    if not isinstance(key, Ed25519PrivateKey if private else Ed25519PublicKey):
        raise EdgeError(f"{path}: not an Ed25519 key")
    return key


def keygen(out: Path) -> dict:
    """A new key pair: OUT/bundle-signing.key (private, 0600, stays on the workstation) and .pub (for boxes)."""
    _, serialization, Ed25519PrivateKey, _ = _crypto()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    private, public = out / "bundle-signing.key", out / "bundle-signing.pub"
    if private.exists():
        raise EdgeError(f"{private} exists; keys are not overwritten")
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    with os.fdopen(os.open(private, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb") as f:
        f.write(pem)
    public.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                     serialization.PublicFormat.SubjectPublicKeyInfo))
    return {"private": str(private), "public": str(public), "key_id": key_id(key.public_key())}


def sign(folder: Path, private_key: Path) -> dict:
    key = _load(private_key, private=True)
    body = manifest(folder)
    record = {"algorithm": "ed25519", "key_id": key_id(key.public_key()),
              "signature": base64.b64encode(key.sign(body)).decode(), "manifest": body.decode()}
    (Path(folder) / SIGNATURE).write_text(json.dumps(record, indent=1) + "\n")
    return {"bundle": str(folder), "signed": len(body.splitlines()), "key_id": record["key_id"]}


def verify(folder: Path, public_key: Path, contents: dict[str, bytes] | None = None) -> str:
    """The key id when the bundle's signature verifies over its files as read now; else a named EdgeError."""
    InvalidSignature, _, _, _ = _crypto()
    key = _load(public_key, private=False)
    path = Path(folder) / SIGNATURE
    if not path.is_file():
        raise EdgeError(f"{folder}: unsigned, and bundle_key {public_key} asks for a signature (qc bundle sign)")
    try:
        record = json.loads(path.read_text())
        signature = base64.b64decode(record["signature"], validate=True)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise EdgeError(f"{path}: not a bundle signature ({exc})") from None
    try:
        key.verify(signature, manifest(folder, contents))
    except InvalidSignature:
        raise EdgeError(f"{folder}: the signature does not verify against bundle_key {public_key} (files changed "
                        "since signing, or signed with another key)") from None
    return key_id(key)
