"""MinHash signatures on a CUDA GPU with CuPy ``RawKernel``s, bit for bit the same as the CPU
kernels (``curation._kernels.minhash``) and :mod:`curation.dedup.reference`, in both hash
modes. Used through ``MinHasher(device="cuda")``; CuPy is imported only when this runs.

Three kernels per batch of documents:

1. ``minhash_normalize`` (a thread per document): the normalised text (tokens lower-cased and
   joined by single spaces) written over a copy of the document's byte range, its length, and
   the document's shingle count.
2. ``minhash_shingle_hashes`` (a thread per document): every shingle of the normalised text,
   found with a ring of the last ``ngram`` token (or code point) starts, hashed (xxh64 reduced
   mod 2^61 - 1, or datasketch's sha1_hash32) into the document's slice of one flat array laid
   out by the exclusive scan of the counts.
3. ``minhash_permute_min`` (a block per document, a thread per permutation): the minimum over
   the document's hashes of each permuted value, with a 64x64->128 product (``__umul64hi``)
   and the Mersenne reduction. Every thread of a warp reads the same hash at the same time, a
   broadcast load served from L1.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from curation.dedup import reference

# Longest shingle the GPU kernels take (the ring of token starts lives in registers/local
# memory); the CPU kernels have no limit.
MAX_NGRAM = 64
# Documents per launch are chosen so that one batch holds at most this much text on the GPU
# (the text, its normalised copy, and 8 bytes per shingle hash).
BATCH_BYTES = 256 << 20
THREADS = 128

KERNEL_SOURCE = r"""
typedef unsigned long long u64;
typedef long long i64;
typedef unsigned int u32;
typedef unsigned char u8;

#define P61 0x1FFFFFFFFFFFFFFFULL
#define MAX_NGRAM 64

__device__ __forceinline__ u64 rotl64(u64 x, int r) { return (x << r) | (x >> (64 - r)); }
__device__ __forceinline__ u32 rotl32(u32 x, int r) { return (x << r) | (x >> (32 - r)); }

// Little-endian loads from byte addresses of any alignment.
__device__ __forceinline__ u64 load_le64(const u8* p) {
  u64 v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | p[i];
  return v;
}
__device__ __forceinline__ u32 load_le32(const u8* p) {
  return (u32)p[0] | ((u32)p[1] << 8) | ((u32)p[2] << 16) | ((u32)p[3] << 24);
}

__device__ __forceinline__ u64 mod_p61(u64 x) {
  x = (x & P61) + (x >> 61);
  return x >= P61 ? x - P61 : x;
}

#define XXH_P1 0x9E3779B185EBCA87ULL
#define XXH_P2 0xC2B2AE3D27D4EB4FULL
#define XXH_P3 0x165667B19E3779F9ULL
#define XXH_P4 0x85EBCA77C2B2AE63ULL
#define XXH_P5 0x27D4EB2F165667C5ULL

__device__ __forceinline__ u64 xxh_round(u64 acc, u64 lane) {
  return rotl64(acc + lane * XXH_P2, 31) * XXH_P1;
}

__device__ u64 xxh64(const u8* p, i64 n, u64 seed) {
  const u8* const end = p + n;
  u64 h;
  if (n >= 32) {
    u64 v1 = seed + XXH_P1 + XXH_P2, v2 = seed + XXH_P2, v3 = seed, v4 = seed - XXH_P1;
    do {
      v1 = xxh_round(v1, load_le64(p));
      v2 = xxh_round(v2, load_le64(p + 8));
      v3 = xxh_round(v3, load_le64(p + 16));
      v4 = xxh_round(v4, load_le64(p + 24));
      p += 32;
    } while (p + 32 <= end);
    h = rotl64(v1, 1) + rotl64(v2, 7) + rotl64(v3, 12) + rotl64(v4, 18);
    h = (h ^ xxh_round(0, v1)) * XXH_P1 + XXH_P4;
    h = (h ^ xxh_round(0, v2)) * XXH_P1 + XXH_P4;
    h = (h ^ xxh_round(0, v3)) * XXH_P1 + XXH_P4;
    h = (h ^ xxh_round(0, v4)) * XXH_P1 + XXH_P4;
  } else {
    h = seed + XXH_P5;
  }
  h += (u64)n;
  for (; p + 8 <= end; p += 8) {
    h ^= xxh_round(0, load_le64(p));
    h = rotl64(h, 27) * XXH_P1 + XXH_P4;
  }
  if (p + 4 <= end) {
    h ^= (u64)load_le32(p) * XXH_P1;
    h = rotl64(h, 23) * XXH_P2 + XXH_P3;
    p += 4;
  }
  for (; p < end; ++p) {
    h ^= (u64)(*p) * XXH_P5;
    h = rotl64(h, 11) * XXH_P1;
  }
  h ^= h >> 33;
  h *= XXH_P2;
  h ^= h >> 29;
  h *= XXH_P3;
  h ^= h >> 32;
  return h;
}

__device__ void sha1_compress(u32* state, const u8* block) {
  u32 w[80];
  for (int t = 0; t < 16; ++t) {
    w[t] = ((u32)block[4 * t] << 24) | ((u32)block[4 * t + 1] << 16) |
           ((u32)block[4 * t + 2] << 8) | (u32)block[4 * t + 3];
  }
  for (int t = 16; t < 80; ++t) w[t] = rotl32(w[t - 3] ^ w[t - 8] ^ w[t - 14] ^ w[t - 16], 1);
  u32 a = state[0], b = state[1], c = state[2], d = state[3], e = state[4];
  for (int t = 0; t < 80; ++t) {
    u32 f, k;
    if (t < 20) {
      f = d ^ (b & (c ^ d));
      k = 0x5A827999u;
    } else if (t < 40) {
      f = b ^ c ^ d;
      k = 0x6ED9EBA1u;
    } else if (t < 60) {
      f = (b & c) | (d & (b | c));
      k = 0x8F1BBCDCu;
    } else {
      f = b ^ c ^ d;
      k = 0xCA62C1D6u;
    }
    const u32 tmp = rotl32(a, 5) + f + e + k + w[t];
    e = d;
    d = c;
    c = rotl32(b, 30);
    b = a;
    a = tmp;
  }
  state[0] += a;
  state[1] += b;
  state[2] += c;
  state[3] += d;
  state[4] += e;
}

// datasketch's sha1_hash32: the first four digest bytes, little-endian.
__device__ u32 sha1_hash32(const u8* data, i64 n) {
  u32 state[5] = {0x67452301u, 0xEFCDAB89u, 0x98BADCFEu, 0x10325476u, 0xC3D2E1F0u};
  i64 full = n / 64;
  for (i64 i = 0; i < full; ++i) sha1_compress(state, data + 64 * i);
  u8 tail[128];
  for (int i = 0; i < 128; ++i) tail[i] = 0;
  const i64 rest = n - 64 * full;
  for (i64 i = 0; i < rest; ++i) tail[i] = data[64 * full + i];
  tail[rest] = 0x80;
  const int blocks = rest < 56 ? 1 : 2;
  const u64 bits = (u64)n * 8;
  for (int i = 0; i < 8; ++i) tail[64 * blocks - 1 - i] = (u8)(bits >> (8 * i));
  for (int i = 0; i < blocks; ++i) sha1_compress(state, tail + 64 * i);
  const u32 h0 = state[0];
  return (h0 >> 24) | ((h0 >> 8) & 0xFF00u) | ((h0 << 8) & 0xFF0000u) | (h0 << 24);
}

// ASCII whitespace " \t\n\r\v\f" and ASCII punctuation split tokens.
__device__ __forceinline__ bool is_separator(u8 c) {
  return c == 32 || (c >= 9 && c <= 13) || (c >= 33 && c <= 47) || (c >= 58 && c <= 64) ||
         (c >= 91 && c <= 96) || (c >= 123 && c <= 126);
}

__device__ __forceinline__ bool is_utf8_lead(u8 c) { return (c & 0xC0) != 0x80; }

extern "C" __global__ void minhash_normalize(const u8* data, const i64* offsets, i64 n_docs,
                                             i64 ngram, int char_mode, u8* norm, i64* norm_len,
                                             i64* counts) {
  const i64 doc = (i64)blockIdx.x * blockDim.x + threadIdx.x;
  if (doc >= n_docs) return;
  const i64 begin = offsets[doc], end = offsets[doc + 1];
  u8* out = norm + begin;
  i64 w = 0, tokens = 0, chars = 0;
  bool prev_token = false;
  for (i64 j = begin; j < end; ++j) {
    const u8 c = data[j];
    const bool token = !is_separator(c);
    if (token) {
      if (!prev_token) {
        if (tokens > 0) {
          out[w++] = ' ';
          ++chars;
        }
        ++tokens;
      }
      out[w++] = (c >= 'A' && c <= 'Z') ? (u8)(c + 32) : c;
      chars += is_utf8_lead(c);
    }
    prev_token = token;
  }
  norm_len[doc] = w;
  const i64 units = char_mode ? chars : tokens;
  counts[doc] = units == 0 ? 0 : (units < ngram ? 1 : units - ngram + 1);
}

__device__ __forceinline__ u64 shingle_hash(const u8* p, i64 n, int sha1) {
  return sha1 ? (u64)sha1_hash32(p, n) : mod_p61(xxh64(p, n, 0));
}

extern "C" __global__ void minhash_shingle_hashes(const u8* norm, const i64* offsets,
                                                  const i64* norm_len, const i64* hash_offsets,
                                                  i64 n_docs, i64 ngram, int char_mode,
                                                  int sha1, u64* hashes) {
  const i64 doc = (i64)blockIdx.x * blockDim.x + threadIdx.x;
  if (doc >= n_docs) return;
  if (hash_offsets[doc + 1] == hash_offsets[doc]) return;
  const u8* text = norm + offsets[doc];
  const i64 size = norm_len[doc];
  u64* out = hashes + hash_offsets[doc];
  // starts[u % MAX_NGRAM] = where unit u (a token, or a code point) begins; a shingle is
  // units u-ngram .. u-1, emitted when unit u-1 ends.
  i64 starts[MAX_NGRAM];
  i64 units = 0;
  for (i64 j = 0; j <= size; ++j) {
    bool unit_ends, unit_starts;
    if (char_mode) {
      unit_starts = j < size && is_utf8_lead(text[j]);
      unit_ends = units > 0 && (j == size || unit_starts);
    } else {
      unit_ends = units > 0 && (j == size || text[j] == ' ') && text[j - 1] != ' ';
      unit_starts = j < size && text[j] != ' ' && (j == 0 || text[j - 1] == ' ');
    }
    if (unit_ends && units >= ngram) {
      const i64 from = starts[(units - ngram) % MAX_NGRAM];
      *out++ = shingle_hash(text + from, j - from, sha1);
    }
    if (unit_starts) starts[units++ % MAX_NGRAM] = j;
  }
  if (units < ngram) *out = shingle_hash(text, size, sha1);
}

// a and b come reduced mod p in xxh64 mode, whole in sha1 mode.
extern "C" __global__ void minhash_permute_min(const u64* hashes, const i64* hash_offsets,
                                               const u64* a, const u64* b, i64 num_perm,
                                               int sha1, u64* sig) {
  const i64 doc = blockIdx.x;
  const i64 begin = hash_offsets[doc], end = hash_offsets[doc + 1];
  for (i64 k = threadIdx.x; k < num_perm; k += blockDim.x) {
    const u64 ak = a[k], bk = b[k];
    u64 m = sha1 ? 0xFFFFFFFFULL : 0xFFFFFFFFFFFFFFFFULL;
    if (sha1) {
      for (i64 j = begin; j < end; ++j) {
        const u64 v = mod_p61(ak * hashes[j] + bk) & 0xFFFFFFFFULL;
        m = v < m ? v : m;
      }
    } else {
      for (i64 j = begin; j < end; ++j) {
        const u64 x = hashes[j];
        u64 lo = ak * x;
        u64 hi = __umul64hi(ak, x);
        lo += bk;
        hi += lo < bk;  // a*x + b < 2^123
        const u64 v = mod_p61((lo & P61) + ((lo >> 61) | (hi << 3)));
        m = v < m ? v : m;
      }
    }
    sig[doc * num_perm + k] = m;
  }
}
"""

_module: Any = None


def _cupy() -> Any:
    """CuPy, or a RuntimeError saying how to get it."""
    try:
        import cupy
    except ImportError as e:
        raise RuntimeError("MinHasher(device='cuda') needs CuPy: pip install 'crucible[gpu]' "
                           "(cupy-cuda13x), or use device='cpu'") from e
    return cupy


def require_gpu() -> None:
    """Raises RuntimeError unless CuPy imports and sees at least one CUDA device."""
    cp = _cupy()
    try:
        count = cp.cuda.runtime.getDeviceCount()
    except cp.cuda.runtime.CUDARuntimeError as e:
        raise RuntimeError(f"MinHasher(device='cuda'): no usable CUDA GPU ({e}); use "
                           f"device='cpu'") from e
    if count == 0:
        raise RuntimeError("MinHasher(device='cuda'): CuPy sees no CUDA GPU; use device='cpu'")


def _kernels() -> Any:
    global _module
    if _module is None:
        _module = _cupy().RawModule(code=KERNEL_SOURCE, options=("--std=c++14",))
    return _module


def signatures(offsets: np.ndarray, data: np.ndarray, a: np.ndarray, b: np.ndarray, ngram: int,
               char_mode: bool, sha1: bool) -> np.ndarray:
    """MinHash signatures (n_docs, num_perm) uint64 on the GPU; the same contract as
    ``curation._kernels.minhash`` (offsets int32/int64 of n_docs + 1, data uint8)."""
    if not 1 <= ngram <= MAX_NGRAM:
        raise ValueError(f"device='cuda' takes ngram 1..{MAX_NGRAM} (got {ngram}); use "
                         f"device='cpu' for longer shingles")
    offsets = np.asarray(offsets, dtype=np.int64)
    if offsets.ndim != 1 or len(offsets) < 1:
        raise ValueError("offsets must be 1-D with n_docs + 1 values")
    if np.any(np.diff(offsets) < 0) or offsets[0] < 0 or offsets[-1] > len(data):
        raise ValueError("offsets must be non-decreasing, from >= 0, and end within data")
    a = np.ascontiguousarray(a, dtype=np.uint64)
    b = np.ascontiguousarray(b, dtype=np.uint64)
    if not sha1:  # (a*x + b) mod p depends only on a, b mod p; the kernel needs them < 2^61
        p = np.uint64(reference.MERSENNE_PRIME)
        a, b = a % p, b % p
    cp = _cupy()
    n_docs = len(offsets) - 1
    out = np.empty((n_docs, len(a)), np.uint64)
    a_dev, b_dev = cp.asarray(a), cp.asarray(b)
    for lo, hi in _batches(offsets):
        out[lo:hi] = _batch_signatures(cp, offsets[lo:hi + 1], data, a_dev, b_dev, ngram,
                                       char_mode, sha1)
    return out


def _batches(offsets: np.ndarray) -> list[tuple[int, int]]:
    """Document ranges [lo, hi) holding at most BATCH_BYTES of text each (at least one doc)."""
    n_docs, out, lo = len(offsets) - 1, [], 0
    while lo < n_docs:
        hi = int(np.searchsorted(offsets, offsets[lo] + BATCH_BYTES, side="right")) - 1
        hi = min(max(hi, lo + 1), n_docs)
        out.append((lo, hi))
        lo = hi
    return out


def _batch_signatures(cp: Any, offsets: np.ndarray, data: np.ndarray, a_dev: Any, b_dev: Any,
                      ngram: int, char_mode: bool, sha1: bool) -> np.ndarray:
    module = _kernels()
    n_docs, num_perm = len(offsets) - 1, len(a_dev)
    base = int(offsets[0])
    text = cp.asarray(data[base:int(offsets[-1])])
    doc_offsets = cp.asarray(offsets - base)
    norm = cp.empty_like(text)
    norm_len = cp.empty(n_docs, cp.int64)
    counts = cp.empty(n_docs, cp.int64)
    grid = ((n_docs + THREADS - 1) // THREADS,)
    module.get_function("minhash_normalize")(
        grid, (THREADS,), (text, doc_offsets, np.int64(n_docs), np.int64(ngram),
                           np.int32(char_mode), norm, norm_len, counts))
    hash_offsets = cp.zeros(n_docs + 1, cp.int64)
    cp.cumsum(counts, out=hash_offsets[1:])
    hashes = cp.empty(max(int(hash_offsets[-1]), 1), cp.uint64)
    module.get_function("minhash_shingle_hashes")(
        grid, (THREADS,), (norm, doc_offsets, norm_len, hash_offsets, np.int64(n_docs),
                           np.int64(ngram), np.int32(char_mode), np.int32(sha1), hashes))
    sig = cp.empty((n_docs, num_perm), cp.uint64)
    block = min(THREADS, (num_perm + 31) // 32 * 32)
    if n_docs:
        module.get_function("minhash_permute_min")(
            (n_docs,), (block,), (hashes, hash_offsets, a_dev, b_dev, np.int64(num_perm),
                                  np.int32(sha1), sig))
    return cp.asnumpy(sig)
