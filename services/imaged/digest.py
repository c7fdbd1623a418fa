"""Content digests (OCI image spec, descriptor.md#digests): parsing and verification.

Only the algorithms the OCI image spec registers are accepted; anything else is
refused rather than trusted, since an unverifiable digest protects nothing.
"""

from __future__ import annotations

import hashlib
import re

from shared.errors import DataLoss, InvalidArgument

# algorithm -> length of its lowercase hex encoding
ALGORITHMS: dict[str, int] = {"sha256": 64, "sha512": 128}
_DIGEST = re.compile(r"^([a-z0-9]+(?:[+._-][a-z0-9]+)*):([a-zA-Z0-9=_-]+)$")


def parse_digest(value: str) -> tuple[str, str]:
    """Return (algorithm, hex) of a digest such as "sha256:<64 hex>"."""
    m = _DIGEST.match(value)
    if not m:
        raise InvalidArgument(f"invalid digest {value!r}")
    algorithm, encoded = m.groups()
    if algorithm not in ALGORITHMS:
        raise InvalidArgument(f"unsupported digest algorithm {algorithm!r} in {value!r}")
    if len(encoded) != ALGORITHMS[algorithm] or not re.fullmatch(r"[0-9a-f]+", encoded):
        raise InvalidArgument(f"invalid {algorithm} digest {value!r}")
    return algorithm, encoded


def is_digest(value: str) -> bool:
    try:
        parse_digest(value)
    except InvalidArgument:
        return False
    return True


def new_hasher(digest: str) -> hashlib._Hash:
    """A hasher of the algorithm `digest` uses, to verify content against it."""
    algorithm, _ = parse_digest(digest)
    return hashlib.new(algorithm)


def digest_of(data: bytes, algorithm: str = "sha256") -> str:
    return f"{algorithm}:{hashlib.new(algorithm, data).hexdigest()}"


def verify_bytes(data: bytes, expected: str, what: str) -> None:
    """Raise DataLoss unless `data` hashes to `expected`."""
    algorithm, _ = parse_digest(expected)
    actual = digest_of(data, algorithm)
    if actual != expected:
        raise DataLoss(f"{what}: content digest {actual} does not match the expected {expected}")
