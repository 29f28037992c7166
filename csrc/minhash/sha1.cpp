// SHA-1 (FIPS 180-4) for short messages such as shingles, two ways: portable C++ and the x86
// SHA extensions (SHA-NI, four rounds per instruction). Messages are their 64-byte blocks and
// then one or two padding blocks built on the stack. datasketch keeps the first four digest
// bytes little-endian, i.e. the byte-swapped first state word.
#include "sha1.h"

#include <cstring>
#include <utility>

#include "cpu_features.h"

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define CRUCIBLE_SHA1_X86 1
#define CRUCIBLE_TARGET_SHA __attribute__((target("sha,sse4.1")))
#endif

namespace crucible::minhash {
namespace {

constexpr uint32_t kInit[5] = {0x67452301u, 0xEFCDAB89u, 0x98BADCFEu, 0x10325476u, 0xC3D2E1F0u};

inline uint32_t rotl32(uint32_t x, int r) { return (x << r) | (x >> (32 - r)); }

inline uint32_t load_be32(const uint8_t* p) {
  uint32_t v;
  std::memcpy(&v, p, 4);
  return __builtin_bswap32(v);
}

// One round with the working variables renamed rather than moved: five consecutive calls
// with the arguments rotated are five rounds.
template <int F>
inline void sha1_round(uint32_t a, uint32_t& b, uint32_t c, uint32_t d, uint32_t& e, uint32_t w) {
  uint32_t f, k;
  if constexpr (F == 0) {
    f = d ^ (b & (c ^ d));
    k = 0x5A827999u;
  } else if constexpr (F == 2) {
    f = (b & c) | (d & (b | c));
    k = 0x8F1BBCDCu;
  } else {
    f = b ^ c ^ d;
    k = F == 1 ? 0x6ED9EBA1u : 0xCA62C1D6u;
  }
  e += rotl32(a, 5) + f + k + w;
  b = rotl32(b, 30);
}

template <int F>
inline void sha1_rounds20(uint32_t& a, uint32_t& b, uint32_t& c, uint32_t& d, uint32_t& e,
                          const uint32_t* w) {
  for (int t = 0; t < 20; t += 5) {
    sha1_round<F>(a, b, c, d, e, w[t]);
    sha1_round<F>(e, a, b, c, d, w[t + 1]);
    sha1_round<F>(d, e, a, b, c, w[t + 2]);
    sha1_round<F>(c, d, e, a, b, w[t + 3]);
    sha1_round<F>(b, c, d, e, a, w[t + 4]);
  }
}

void compress_portable(uint32_t state[5], const uint8_t* block) {
  uint32_t w[80];
  for (int t = 0; t < 16; ++t) w[t] = load_be32(block + 4 * t);
  for (int t = 16; t < 80; ++t) w[t] = rotl32(w[t - 3] ^ w[t - 8] ^ w[t - 14] ^ w[t - 16], 1);
  uint32_t a = state[0], b = state[1], c = state[2], d = state[3], e = state[4];
  sha1_rounds20<0>(a, b, c, d, e, w);
  sha1_rounds20<1>(a, b, c, d, e, w + 20);
  sha1_rounds20<2>(a, b, c, d, e, w + 40);
  sha1_rounds20<3>(a, b, c, d, e, w + 60);
  state[0] += a;
  state[1] += b;
  state[2] += c;
  state[3] += d;
  state[4] += e;
}

// Runs compress over the whole blocks of the message, then over its padding: the tail, the
// 0x80 marker and the 64-bit big-endian bit length (two blocks when fewer than 9 bytes are
// left in the first).
template <class Compress>
void sha1_blocks(uint32_t state[5], const uint8_t* data, size_t size, Compress&& compress) {
  const size_t full = size / 64;
  for (size_t i = 0; i < full; ++i) compress(state, data + 64 * i);
  uint8_t tail[128] = {};
  const size_t rest = size - 64 * full;
  if (rest) std::memcpy(tail, data + 64 * full, rest);
  tail[rest] = 0x80;
  const size_t blocks = rest < 56 ? 1 : 2;
  const uint64_t bits = static_cast<uint64_t>(size) * 8;
  for (int i = 0; i < 8; ++i) tail[64 * blocks - 1 - i] = static_cast<uint8_t>(bits >> (8 * i));
  for (size_t i = 0; i < blocks; ++i) compress(state, tail + 64 * i);
}

#ifdef CRUCIBLE_SHA1_X86
// The SHA-NI form of the 80 rounds: 20 groups of four. Group g uses round function g / 5 and
// message word group g % 4; the schedule runs sha1msg1 (groups 1-16), a xor (2-17) and
// sha1msg2 (3-18) a few groups ahead of the rounds that consume it.
struct Sha1Ni {
  __m128i abcd, e0, e1, msg[4];

  template <int G>
  CRUCIBLE_TARGET_SHA inline void group() {
    __m128i& e_cur = (G % 2 == 0) ? e0 : e1;
    __m128i& e_other = (G % 2 == 0) ? e1 : e0;
    if constexpr (G == 0) {
      e_cur = _mm_add_epi32(e_cur, msg[0]);
    } else {
      e_cur = _mm_sha1nexte_epu32(e_cur, msg[G % 4]);
    }
    e_other = abcd;
    const __m128i& w = msg[G % 4];
    if constexpr (G >= 3 && G <= 18) msg[(G + 1) % 4] = _mm_sha1msg2_epu32(msg[(G + 1) % 4], w);
    abcd = _mm_sha1rnds4_epu32(abcd, e_cur, G / 5);
    if constexpr (G >= 1 && G <= 16) msg[(G + 3) % 4] = _mm_sha1msg1_epu32(msg[(G + 3) % 4], w);
    if constexpr (G >= 2 && G <= 17) msg[(G + 2) % 4] = _mm_xor_si128(msg[(G + 2) % 4], w);
  }

  template <int... G>
  CRUCIBLE_TARGET_SHA inline void rounds(std::integer_sequence<int, G...>) {
    (group<G>(), ...);
  }
};

CRUCIBLE_TARGET_SHA void compress_sha_ni(uint32_t state[5], const uint8_t* block) {
  const __m128i byteswap = _mm_set_epi64x(0x0001020304050607LL, 0x08090a0b0c0d0e0fLL);
  Sha1Ni s;
  // The SHA-NI register order: abcd holds A in its top lane, e0 holds E in its top lane.
  const __m128i abcd_save =
      _mm_shuffle_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(state)), 0x1B);
  const __m128i e_save = _mm_set_epi32(static_cast<int>(state[4]), 0, 0, 0);
  s.abcd = abcd_save;
  s.e0 = e_save;
  s.e1 = _mm_setzero_si128();
  for (int i = 0; i < 4; ++i) {
    s.msg[i] = _mm_shuffle_epi8(
        _mm_loadu_si128(reinterpret_cast<const __m128i*>(block + 16 * i)), byteswap);
  }
  s.rounds(std::make_integer_sequence<int, 20>());
  // After group 19 (odd), e0 holds the abcd from before it, whose A rotated is the new E.
  s.e0 = _mm_sha1nexte_epu32(s.e0, e_save);
  s.abcd = _mm_add_epi32(s.abcd, abcd_save);
  const __m128i out = _mm_shuffle_epi32(s.abcd, 0x1B);
  _mm_storeu_si128(reinterpret_cast<__m128i*>(state), out);
  state[4] = static_cast<uint32_t>(_mm_extract_epi32(s.e0, 3));
}

CRUCIBLE_TARGET_SHA uint32_t sha1_hash32_sha_ni(const uint8_t* data, size_t size) {
  uint32_t state[5] = {kInit[0], kInit[1], kInit[2], kInit[3], kInit[4]};
  sha1_blocks(state, data, size, compress_sha_ni);
  return __builtin_bswap32(state[0]);
}
#endif  // CRUCIBLE_SHA1_X86

}  // namespace

uint32_t sha1_hash32_portable(const uint8_t* data, size_t size) {
  uint32_t state[5] = {kInit[0], kInit[1], kInit[2], kInit[3], kInit[4]};
  sha1_blocks(state, data, size, compress_portable);
  return __builtin_bswap32(state[0]);
}

Sha1Hash32 sha1_hash32_impl() {
#ifdef CRUCIBLE_SHA1_X86
  if (sha_ni_available()) return &sha1_hash32_sha_ni;
#endif
  return &sha1_hash32_portable;
}

}  // namespace crucible::minhash
