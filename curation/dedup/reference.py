"""Plain-Python definitions of shingling, hashing and MinHash: the specification the compiled
kernels (``curation._kernels``) and the GPU path must reproduce bit for bit, and the oracle of
their tests. Slow on purpose: one Python object per shingle.

Normalisation and tokens (word mode): the text's UTF-8 bytes are split into tokens at ASCII
whitespace and ASCII punctuation; ASCII letters are lower-cased; every other byte (all of
non-ASCII text) is kept as is, so Cyrillic, Greek or CJK words stay whole tokens (their case is
not folded). A shingle is ``ngram`` consecutive tokens joined by one space; a document with at
least one but fewer than ``ngram`` tokens has one shingle (all its tokens); one with no tokens
has none.

Character mode (languages written without spaces): the normalised text is the tokens joined by
one space; shingles are its ``ngram``-code-point substrings (one shingle of the whole text when
it is shorter).

Hashes: ``"xxh64"`` (fast mode) is xxHash64 of the shingle's UTF-8 bytes, seed 0; ``"sha1"``
(datasketch parity) is the first four bytes of SHA-1, little-endian, as ``datasketch.sha1_hash32``.

Permutations: ``a`` and ``b`` are drawn exactly as datasketch draws them
(``np.random.RandomState(seed)``, ``randint(1, p)`` then ``randint(0, p)`` per permutation,
``p = 2**61 - 1``). In sha1 mode each value is ``((a * h + b) mod 2**64) mod p) & (2**32 - 1)`` —
datasketch's uint64 arithmetic, wrap-around included — so signatures equal
``datasketch.MinHash(num_perm, seed, scheme="legacy").hashvalues`` (the only scheme of
datasketch 1.x, selectable in 2.x) for the same shingles. In xxh64 mode it is the
true ``(a * (h mod p) + b) mod p``. A document without shingles gets the all-maximum signature
(``2**32 - 1`` in sha1 mode, ``2**64 - 1`` in xxh64 mode), as an empty datasketch MinHash does.

Band keys: for band ``i`` (rows ``i*r .. i*r+r-1`` of the signature), xxHash64 of those ``r``
values as little-endian uint64 bytes, seed ``i``.
"""

from __future__ import annotations

import hashlib
import struct

import numpy as np

MERSENNE_PRIME = (1 << 61) - 1
MAX_HASH_32 = (1 << 32) - 1
MAX_HASH_64 = (1 << 64) - 1
_PUNCT = set(b"!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~")
_SPACE = set(b" \t\n\r\x0b\x0c")


def permutations(num_perm: int, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """The ``a`` and ``b`` coefficients (uint64 arrays), drawn as datasketch draws them."""
    gen = np.random.RandomState(seed)
    pairs = np.array([(gen.randint(1, MERSENNE_PRIME, dtype=np.uint64),
                       gen.randint(0, MERSENNE_PRIME, dtype=np.uint64))
                      for _ in range(num_perm)], dtype=np.uint64)
    return pairs[:, 0].copy(), pairs[:, 1].copy()


def tokens(text: str) -> list[bytes]:
    """Word tokens of ``text`` (see the module docstring)."""
    out, current = [], bytearray()
    for byte in text.encode("utf-8"):
        if byte in _SPACE or byte in _PUNCT:
            if current:
                out.append(bytes(current))
                current = bytearray()
        else:
            current.append(byte + 32 if 65 <= byte <= 90 else byte)
    if current:
        out.append(bytes(current))
    return out


def shingles(text: str, ngram: int = 5, mode: str = "word") -> list[bytes]:
    """The shingles of ``text`` as UTF-8 bytes, in document order (duplicates kept)."""
    toks = tokens(text)
    if mode == "word":
        if not toks:
            return []
        if len(toks) < ngram:
            return [b" ".join(toks)]
        return [b" ".join(toks[i:i + ngram]) for i in range(len(toks) - ngram + 1)]
    if mode == "char":
        chars = b" ".join(toks).decode("utf-8")
        if not chars:
            return []
        if len(chars) < ngram:
            return [chars.encode()]
        return [chars[i:i + ngram].encode() for i in range(len(chars) - ngram + 1)]
    raise ValueError(f"mode must be 'word' or 'char' (got {mode!r})")


def _rotl(x: int, r: int) -> int:
    return ((x << r) | (x >> (64 - r))) & MAX_HASH_64


_P1, _P2, _P3 = 0x9E3779B185EBCA87, 0xC2B2AE3D27D4EB4F, 0x165667B19E3779F9
_P4, _P5 = 0x85EBCA77C2B2AE63, 0x27D4EB2F165667C5


def xxh64(data: bytes, seed: int = 0) -> int:
    """xxHash64 (the public XXH64 specification)."""
    m = MAX_HASH_64
    n = len(data)
    i = 0

    def rnd(acc: int, lane: int) -> int:
        return (_rotl((acc + lane * _P2) & m, 31) * _P1) & m

    if n >= 32:
        v = [(seed + _P1 + _P2) & m, (seed + _P2) & m, seed & m, (seed - _P1) & m]
        while i + 32 <= n:
            for k in range(4):
                v[k] = rnd(v[k], struct.unpack_from("<Q", data, i + 8 * k)[0])
            i += 32
        h = (_rotl(v[0], 1) + _rotl(v[1], 7) + _rotl(v[2], 12) + _rotl(v[3], 18)) & m
        for k in range(4):
            h = ((h ^ rnd(0, v[k])) * _P1 + _P4) & m
    else:
        h = (seed + _P5) & m
    h = (h + n) & m
    while i + 8 <= n:
        h ^= rnd(0, struct.unpack_from("<Q", data, i)[0])
        h = (_rotl(h, 27) * _P1 + _P4) & m
        i += 8
    if i + 4 <= n:
        h ^= (struct.unpack_from("<I", data, i)[0] * _P1) & m
        h = (_rotl(h, 23) * _P2 + _P3) & m
        i += 4
    while i < n:
        h ^= (data[i] * _P5) & m
        h = (_rotl(h, 11) * _P1) & m
        i += 1
    h ^= h >> 33
    h = (h * _P2) & m
    h ^= h >> 29
    h = (h * _P3) & m
    h ^= h >> 32
    return h


def sha1_hash32(data: bytes) -> int:
    """datasketch's default hash: the first four bytes of SHA-1, little-endian."""
    return struct.unpack("<I", hashlib.sha1(data).digest()[:4])[0]


def signature(text: str, num_perm: int = 128, ngram: int = 5, mode: str = "word",
              seed: int = 1, hash: str = "xxh64") -> np.ndarray:
    """The MinHash signature of one document (uint64, ``num_perm`` values)."""
    a, b = permutations(num_perm, seed)
    a, b = [int(x) for x in a], [int(x) for x in b]
    grams = shingles(text, ngram, mode)
    if hash == "sha1":
        out = [MAX_HASH_32] * num_perm
        for g in grams:
            h = sha1_hash32(g)
            for k in range(num_perm):
                v = (((a[k] * h + b[k]) & MAX_HASH_64) % MERSENNE_PRIME) & MAX_HASH_32
                out[k] = min(out[k], v)
    elif hash == "xxh64":
        out = [MAX_HASH_64] * num_perm
        for g in grams:
            h = xxh64(g) % MERSENNE_PRIME
            for k in range(num_perm):
                out[k] = min(out[k], (a[k] * h + b[k]) % MERSENNE_PRIME)
    else:
        raise ValueError(f"hash must be 'xxh64' or 'sha1' (got {hash!r})")
    return np.array(out, dtype=np.uint64)


def band_keys(sig: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """The LSH band keys of one signature (uint64, ``bands`` values)."""
    if bands * rows > len(sig):
        raise ValueError(f"{bands} bands x {rows} rows need {bands * rows} signature values, "
                         f"the signature has {len(sig)}")
    return np.array([xxh64(sig[i * rows:(i + 1) * rows].astype("<u8").tobytes(), seed=i)
                     for i in range(bands)], dtype=np.uint64)


def shingle_hashes(text: str, ngram: int, mode: str = "word") -> np.ndarray:
    """xxHash64 of every shingle (uint64), as used by decontamination and verification."""
    return np.array([xxh64(g) for g in shingles(text, ngram, mode)], dtype=np.uint64)
