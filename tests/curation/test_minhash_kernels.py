"""The compiled MinHash kernels (curation._kernels, through curation.dedup.minhash) against the
specification in curation.dedup.reference, datasketch's legacy scheme, and Python sets; every
SIMD path of the permutation kernel; input validation; and the CuPy path where a GPU exists."""

import glob
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from curation import _kernels
from curation.dedup import reference
from curation.dedup.minhash import (MinHasher, band_keys, from_datasketch, jaccard_pairs,
                                    shingle_hashes, string_buffers, to_datasketch)

ROOT = Path(__file__).resolve().parents[2]
P = reference.MERSENNE_PRIME
M64 = reference.MAX_HASH_64


def _sample_prose(n: int, chars: int) -> list[str]:
    """Real English documents from the bundled sample, cut to ``chars`` characters."""
    path = sorted(glob.glob(str(ROOT / "data" / "sample" / "raw" / "*.parquet")))[0]
    texts = pq.read_table(path, columns=["text"]).column("text").to_pylist()
    return [t[:chars] for t in texts if t and len(t) > chars][:n]


# Varied text: prose, scripts without case folding, CJK without spaces, emoji, punctuation runs,
# mixed case, control bytes that are not separators, and the degenerate documents.
SPECIAL = [
    "The Quick brown FOX jumps over the lazy dog; the DOG sleeps.",
    "Привет, мир! Как дела? ПРИВЕТ мир — снова и снова, привет.",
    "日本語のテキストです。中文文本没有空格，也要分片。한국어 문장도 있습니다.",
    "emoji 😀😃 test!!! ...  --- 👩‍👩‍👧 family (👍🏽) ok?!",
    "!!!...,,,;;;---___***",
    "MiXeD CaSe WoRdS, mixed case words; MIXED CASE WORDS.",
    "tab\tseparated\nnew lines\r\nand\x0bvertical\x0cfeeds",
    "control\x01bytes\x7fstay inside tokens\x00here",
    "Ελληνικά κείμενα με τόνους, ΕΛΛΗΝΙΚΑ.",
    "",
    "word",
    "two words",
    "a b c d",
    " ",
    "x" * 70,
    "repeat repeat repeat repeat repeat repeat repeat repeat repeat",
]
TEXTS = _sample_prose(6, 500) + SPECIAL
CONFIGS = [("word", 5), ("word", 1), ("word", 3), ("char", 5), ("char", 1)]


def _sig(texts, num_perm, ngram, mode, seed=1, hash="xxh64", **kw):
    return MinHasher(num_perm=num_perm, ngram=ngram, mode=mode, seed=seed, hash=hash,
                     **kw).signatures(pa.array(texts))


@pytest.mark.parametrize("hash", ["xxh64", "sha1"])
@pytest.mark.parametrize("mode,ngram", CONFIGS)
def test_signatures_match_reference(hash, mode, ngram):
    got = _sig(TEXTS, 19, ngram, mode, seed=3, hash=hash)
    want = np.stack([reference.signature(t, 19, ngram, mode, 3, hash) for t in TEXTS])
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("simd", ["scalar", "avx2", "avx512"])
@pytest.mark.parametrize("hash", ["xxh64", "sha1"])
def test_every_simd_path_matches_reference(monkeypatch, simd, hash):
    # Capping the path only lowers it: on a CPU without AVX-512 the "avx512" case reruns AVX2.
    monkeypatch.setenv("CRUCIBLE_MINHASH_SIMD", simd)
    for num_perm in (1, 4, 13, 40):  # partial registers and blocks
        got = _sig(TEXTS[:8] + SPECIAL, num_perm, 5, "word", seed=7, hash=hash)
        want = np.stack([reference.signature(t, num_perm, 5, "word", 7, hash)
                         for t in TEXTS[:8] + SPECIAL])
        np.testing.assert_array_equal(got, want)
    if simd == "scalar":
        assert _kernels.simd_level() == "scalar"


def _python_permute(h: int, a: int, b: int, sha1: bool) -> int:
    if sha1:
        return (((a * h + b) & M64) % P) & reference.MAX_HASH_32
    return (a * (h % P) + b) % P


@pytest.mark.parametrize("simd", ["scalar", "avx2", "avx512"])
@pytest.mark.parametrize("sha1", [False, True])
def test_arbitrary_coefficients_follow_the_formula(monkeypatch, simd, sha1):
    # a and b anywhere in uint64 (>= p, 2^63, all ones): xxh64 mode reduces them mod p first,
    # sha1 mode wraps mod 2^64 exactly like numpy's uint64 arithmetic in datasketch.
    monkeypatch.setenv("CRUCIBLE_MINHASH_SIMD", simd)
    edges = [0, 1, 2, P - 1, P, P + 1, 1 << 61, 1 << 63, M64, M64 - 1, (1 << 32) - 1, 1 << 32]
    rng = np.random.default_rng(0)
    a = np.array(edges + [int(x) for x in rng.integers(0, M64, 12, dtype=np.uint64)], np.uint64)
    b = np.roll(a, 5)
    docs = TEXTS[:4] + ["alpha beta gamma", "x"]
    arr = pa.array(docs)
    got = _kernels.minhash(*string_buffers(arr), a, b, 2, False, sha1, 1)
    for i, text in enumerate(docs):
        grams = reference.shingles(text, 2, "word")
        hashes = [reference.sha1_hash32(g) if sha1 else reference.xxh64(g) for g in grams]
        want = [min(_python_permute(h, int(ak), int(bk), sha1) for h in hashes)
                for ak, bk in zip(a, b)]
        assert got[i].tolist() == want, text


@pytest.mark.parametrize("simd", ["scalar", "avx2", "avx512"])
def test_values_just_above_a_multiple_of_p(monkeypatch, simd):
    # b chosen so that a*x + b = r (mod p) with r in 0..4 for a shingle x of each document:
    # the residues whose unreduced forms (p .. p+4) the vector kernels must not keep.
    monkeypatch.setenv("CRUCIBLE_MINHASH_SIMD", simd)
    docs = ["alpha beta", "one two three four five six seven"]
    xs = [reference.xxh64(reference.shingles(d, 2)[-1]) % P for d in docs]
    rng = np.random.default_rng(3)
    a = [1, 2, P - 1] + [int(v) for v in rng.integers(1, P, 37, dtype=np.uint64)]
    for x, doc_row in zip(xs, range(len(docs))):
        b = [(-ak * x + k % 5) % P for k, ak in enumerate(a)]
        got = _kernels.minhash(*string_buffers(pa.array(docs)), np.array(a, np.uint64),
                               np.array(b, np.uint64), 2, False, False, 1)
        grams = reference.shingles(docs[doc_row], 2)
        want = [min((ak * (reference.xxh64(g) % P) + bk) % P for g in grams)
                for ak, bk in zip(a, b)]
        assert got[doc_row].tolist() == want
        assert want[:5] == [0, 1, 2, 3, 4]


def test_datasketch_legacy_parity():
    datasketch = pytest.importorskip("datasketch")
    texts = _sample_prose(4, 1200) + SPECIAL[:4]
    for num_perm, seed in ((128, 1), (37, 42)):
        got = _sig(texts, num_perm, 5, "word", seed=seed, hash="sha1")
        for i, text in enumerate(texts):
            m = datasketch.MinHash(num_perm=num_perm, seed=seed, scheme="legacy")
            m.update_batch(reference.shingles(text, 5, "word"))
            np.testing.assert_array_equal(got[i], m.hashvalues)
    empty = datasketch.MinHash(num_perm=16, seed=1, scheme="legacy")
    np.testing.assert_array_equal(_sig([""], 16, 5, "word", hash="sha1")[0], empty.hashvalues)


def test_datasketch_round_trip():
    sig = _sig(TEXTS[:2], 64, 5, "word", hash="sha1")
    m0, m1 = to_datasketch(sig[0], seed=1), to_datasketch(sig[1], seed=1)
    np.testing.assert_array_equal(from_datasketch(m0), sig[0])
    assert m0.jaccard(m1) == pytest.approx((sig[0] == sig[1]).mean())
    with pytest.raises(ValueError, match="one signature"):
        to_datasketch(sig)


def test_long_shingles_hash_every_block_size():
    # One shingle of the whole text, 0..200 bytes: xxh64's 32-byte stripes and every SHA-1
    # padding case (one or two final blocks).
    rng = np.random.default_rng(1)
    letters = "".join(rng.choice(list("abcdefghijklmnopqrstuvwxyzé"), 200))
    docs = [letters[:n] for n in range(0, 201, 7)] + [letters[:55], letters[:56], letters[:64]]
    offsets, hashes = shingle_hashes(pa.array(docs), ngram=1000, mode="char")
    for i, d in enumerate(docs):
        want = [reference.xxh64(d.encode())] if d else []
        assert hashes[offsets[i]:offsets[i + 1]].tolist() == want
    got = _sig(docs, 8, 1000, "char", hash="sha1")
    want = np.stack([reference.signature(d, 8, 1000, "char", 1, "sha1") for d in docs])
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("mode,ngram", CONFIGS)
def test_shingle_hashes_match_reference(mode, ngram):
    offsets, hashes = shingle_hashes(pa.array(TEXTS), ngram, mode, threads=2)
    assert offsets.dtype == np.int64 and hashes.dtype == np.uint64
    assert len(offsets) == len(TEXTS) + 1 and offsets[-1] == len(hashes)
    for i, text in enumerate(TEXTS):
        np.testing.assert_array_equal(hashes[offsets[i]:offsets[i + 1]],
                                      reference.shingle_hashes(text, ngram, mode))


def test_band_keys_match_reference():
    sig = _sig(TEXTS, 24, 5, "word")
    for bands, rows in ((6, 4), (3, 8), (24, 1), (5, 3)):
        keys = MinHasher(num_perm=24).band_keys(sig, bands, rows)
        want = np.stack([reference.band_keys(s, bands, rows) for s in sig])
        np.testing.assert_array_equal(keys, want)
    strided = sig[:, ::2]  # non-contiguous input is copied by the wrapper
    np.testing.assert_array_equal(band_keys(strided, 3, 4),
                                  np.stack([reference.band_keys(s, 3, 4) for s in strided]))


@pytest.mark.parametrize("mode,ngram", [("word", 3), ("char", 4)])
def test_jaccard_pairs_match_python_sets(mode, ngram):
    texts = TEXTS + [TEXTS[0] + " and one more sentence here.", TEXTS[1].upper()]
    n = len(texts)
    rng = np.random.default_rng(2)
    left = np.concatenate([rng.integers(0, n, 60), np.arange(n)])
    right = np.concatenate([rng.integers(0, n, 60), np.arange(n)])
    got = jaccard_pairs(pa.array(texts), left, right, ngram, mode)
    sets = [set(reference.shingles(t, ngram, mode)) for t in texts]
    for k, (i, j) in enumerate(zip(left, right)):
        union = len(sets[i] | sets[j])
        assert got[k] == (len(sets[i] & sets[j]) / union if union else 0.0), (i, j)


def test_nulls_slices_large_string_and_chunks():
    texts = TEXTS[:8] + [None, "after a null", None]
    want = _sig([t or "" for t in texts], 16, 3, "word")
    assert (want[8] == M64).all() and (want[10] == M64).all()
    np.testing.assert_array_equal(_sig(texts, 16, 3, "word"), want)
    hasher = MinHasher(num_perm=16, ngram=3)
    for typ in (pa.string(), pa.large_string(), pa.string_view()):
        arr = pa.array(texts, typ)
        np.testing.assert_array_equal(hasher.signatures(arr), want)
        np.testing.assert_array_equal(hasher.signatures(arr.slice(3, 6)), want[3:9])
        np.testing.assert_array_equal(hasher.signatures(arr.slice(11)), want[11:])
    chunked = pa.chunked_array([pa.array(texts[:5]), pa.array(texts[5:], pa.string())])
    np.testing.assert_array_equal(hasher.signatures(chunked), want)
    assert hasher.signatures(pa.chunked_array([], pa.string())).shape == (0, 16)
    offsets, hashes = shingle_hashes(chunked, 3)
    flat_offsets, flat_hashes = shingle_hashes(pa.array(texts), 3)
    np.testing.assert_array_equal(offsets, flat_offsets)
    np.testing.assert_array_equal(hashes, flat_hashes)


def test_null_slot_spanning_bytes_is_empty():
    # Arrow allows a null slot to span data; it must still count as an empty document.
    data = pa.py_buffer(b"hello world again and more")
    offsets = pa.py_buffer(np.array([0, 11, 26], np.int32).tobytes())
    validity = pa.py_buffer(bytes([0b10]))
    arr = pa.Array.from_buffers(pa.string(), 2, [validity, offsets, data], null_count=1)
    sig = MinHasher(num_perm=8, ngram=2).signatures(arr)
    assert (sig[0] == M64).all()
    np.testing.assert_array_equal(sig[1], reference.signature("again and more", 8, 2))


def test_results_do_not_depend_on_thread_count():
    texts = _sample_prose(40, 800) * 5 + SPECIAL
    sigs = [_sig(texts, 32, 5, "word", threads=t) for t in (1, 2, 3, 7)]
    for s in sigs[1:]:
        np.testing.assert_array_equal(s, sigs[0])
    keys = [band_keys(sigs[0], 8, 4, threads=t) for t in (1, 3)]
    np.testing.assert_array_equal(keys[0], keys[1])
    hashes = [shingle_hashes(pa.array(texts), 5, threads=t) for t in (1, 4)]
    np.testing.assert_array_equal(hashes[0][1], hashes[1][1])
    left, right = np.arange(len(texts) - 1), np.arange(1, len(texts))
    np.testing.assert_array_equal(jaccard_pairs(pa.array(texts), left, right, threads=1),
                                  jaccard_pairs(pa.array(texts), left, right, threads=4))


def test_kernel_input_validation():
    arr = pa.array(["some text here", "more"])
    off, data = string_buffers(arr)
    a, b = reference.permutations(8)
    ok = dict(ngram=3, char_mode=False, sha1=False, threads=1)
    cases = [
        ((off.astype(np.float64), data, a, b), "offsets must have dtype int32"),
        ((off, data.astype(np.int8), a, b), "data must have dtype uint8"),
        ((off[None, :], data, a, b), "offsets must be 1-dimensional"),
        ((off, np.repeat(data, 2)[::2], a, b), "data must be C-contiguous"),
        ((np.array([0, 5, 3], np.int32), data, a, b), "non-decreasing"),
        ((np.array([0, 5, 999], np.int64), data, a, b), "offsets end at 999"),
        ((np.array([-1, 3], np.int64), data, a, b), "negative"),
        ((np.array([], np.int64), data, a, b), "n_docs \\+ 1 >= 1"),
        ((off, data, a, b[:4]), "same length"),
        ((off, data, a.astype(np.int64), b), "a must have dtype uint64"),
        ((off.tolist(), data, a, b), "offsets must be a numpy array"),
    ]
    for args, message in cases:
        with pytest.raises(ValueError, match=message):
            _kernels.minhash(*args, **ok)
    with pytest.raises(ValueError, match="ngram must be >= 1"):
        _kernels.minhash(off, data, a, b, 0, False, False, 1)
    with pytest.raises(ValueError, match="threads must be >= 0"):
        _kernels.minhash(off, data, a, b, 3, False, False, -1)
    sig = _kernels.minhash(off, data, a, b, **ok)
    with pytest.raises(ValueError, match="need 12 signature values"):
        _kernels.band_keys(sig, 3, 4, 1)
    with pytest.raises(ValueError, match="signatures must be 2-dimensional"):
        _kernels.band_keys(sig[0], 2, 2, 1)
    with pytest.raises(ValueError, match="bands and rows must be >= 1"):
        _kernels.band_keys(sig, 0, 2, 1)
    idx = np.array([0, 1], np.int64)
    with pytest.raises(ValueError, match=r"right\[1\] = 2 is not a document index"):
        _kernels.jaccard_pairs(off, data, idx, idx + 1, 3, False, 1)
    with pytest.raises(ValueError, match="same length"):
        _kernels.jaccard_pairs(off, data, idx, idx[:1], 3, False, 1)
    with pytest.raises(ValueError, match="left must have dtype int64"):
        _kernels.jaccard_pairs(off, data, idx.astype(np.int32), idx, 3, False, 1)
    with pytest.raises(ValueError, match="ngram must be >= 1"):
        _kernels.shingle_hashes(off, data, 0, False, 1)


def test_wrapper_input_validation():
    for kwargs, message in [(dict(num_perm=0), "num_perm"), (dict(ngram=0), "ngram"),
                            (dict(mode="line"), "mode"), (dict(hash="md5"), "hash"),
                            (dict(threads=-2), "threads"), (dict(device="tpu"), "device")]:
        with pytest.raises(ValueError, match=message):
            MinHasher(**kwargs)
    with pytest.raises(TypeError, match="string or large_string"):
        MinHasher().signatures(pa.array([1, 2, 3]))
    with pytest.raises(ValueError, match="mode"):
        shingle_hashes(pa.array(["a"]), 3, mode="line")


def test_kernels_import_without_torch():
    code = ("import sys; import curation.dedup.minhash as m; "
            "m.MinHasher(num_perm=4).signatures(['a b c']); "
            "assert 'torch' not in sys.modules, 'curation kernels imported torch'")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def _gpu_available() -> bool:
    try:
        import cupy
        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:  # no CuPy, no driver, or no device
        return False


@pytest.mark.skipif(not _gpu_available(), reason="needs CuPy and a CUDA GPU")
class TestGpuSignatures:
    @pytest.mark.parametrize("hash", ["xxh64", "sha1"])
    @pytest.mark.parametrize("mode,ngram", CONFIGS + [("word", 64)])
    def test_gpu_equals_cpu_bit_for_bit(self, hash, mode, ngram):
        texts = _sample_prose(50, 3000) + TEXTS + [None]
        arr = pa.array(texts)
        for num_perm in (128, 13, 300):
            cpu = MinHasher(num_perm, ngram, mode, hash=hash).signatures(arr)
            gpu = MinHasher(num_perm, ngram, mode, hash=hash, device="cuda").signatures(arr)
            np.testing.assert_array_equal(gpu, cpu)

    def test_gpu_rejects_ngram_over_its_limit(self):
        with pytest.raises(ValueError, match="ngram 1..64"):
            MinHasher(ngram=65, device="cuda").signatures(pa.array(["a b"]))


def test_gpu_request_without_gpu_is_a_clear_error():
    if _gpu_available():
        pytest.skip("a GPU is present")
    with pytest.raises(RuntimeError, match="CuPy|GPU"):
        MinHasher(device="cuda")
