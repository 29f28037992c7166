// xxHash64 (the public XXH64 specification) of a byte range, one shot, header-only so that the
// shingle loop inlines it. Matches curation/dedup/reference.py's xxh64 bit for bit.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>

static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__,
              "xxhash64.h reads lanes as native words: little-endian hosts only");

namespace crucible::minhash {

inline constexpr uint64_t kXxhPrime1 = 0x9E3779B185EBCA87ull;
inline constexpr uint64_t kXxhPrime2 = 0xC2B2AE3D27D4EB4Full;
inline constexpr uint64_t kXxhPrime3 = 0x165667B19E3779F9ull;
inline constexpr uint64_t kXxhPrime4 = 0x85EBCA77C2B2AE63ull;
inline constexpr uint64_t kXxhPrime5 = 0x27D4EB2F165667C5ull;

inline uint64_t xxh_rotl(uint64_t x, int r) { return (x << r) | (x >> (64 - r)); }

inline uint64_t xxh_read64(const uint8_t* p) {
  uint64_t v;
  std::memcpy(&v, p, 8);
  return v;
}

inline uint32_t xxh_read32(const uint8_t* p) {
  uint32_t v;
  std::memcpy(&v, p, 4);
  return v;
}

inline uint64_t xxh_round(uint64_t acc, uint64_t lane) {
  return xxh_rotl(acc + lane * kXxhPrime2, 31) * kXxhPrime1;
}

inline uint64_t xxh_merge(uint64_t h, uint64_t v) {
  return (h ^ xxh_round(0, v)) * kXxhPrime1 + kXxhPrime4;
}

inline uint64_t xxh64(const uint8_t* p, size_t n, uint64_t seed = 0) {
  const uint8_t* const end = p + n;
  uint64_t h;
  if (n >= 32) {
    uint64_t v1 = seed + kXxhPrime1 + kXxhPrime2, v2 = seed + kXxhPrime2, v3 = seed,
             v4 = seed - kXxhPrime1;
    const uint8_t* const limit = end - 32;
    do {
      v1 = xxh_round(v1, xxh_read64(p));
      v2 = xxh_round(v2, xxh_read64(p + 8));
      v3 = xxh_round(v3, xxh_read64(p + 16));
      v4 = xxh_round(v4, xxh_read64(p + 24));
      p += 32;
    } while (p <= limit);
    h = xxh_rotl(v1, 1) + xxh_rotl(v2, 7) + xxh_rotl(v3, 12) + xxh_rotl(v4, 18);
    h = xxh_merge(h, v1);
    h = xxh_merge(h, v2);
    h = xxh_merge(h, v3);
    h = xxh_merge(h, v4);
  } else {
    h = seed + kXxhPrime5;
  }
  h += static_cast<uint64_t>(n);
  for (; p + 8 <= end; p += 8) {
    h ^= xxh_round(0, xxh_read64(p));
    h = xxh_rotl(h, 27) * kXxhPrime1 + kXxhPrime4;
  }
  if (p + 4 <= end) {
    h ^= static_cast<uint64_t>(xxh_read32(p)) * kXxhPrime1;
    h = xxh_rotl(h, 23) * kXxhPrime2 + kXxhPrime3;
    p += 4;
  }
  for (; p < end; ++p) {
    h ^= static_cast<uint64_t>(*p) * kXxhPrime5;
    h = xxh_rotl(h, 11) * kXxhPrime1;
  }
  h ^= h >> 33;
  h *= kXxhPrime2;
  h ^= h >> 29;
  h *= kXxhPrime3;
  h ^= h >> 32;
  return h;
}

}  // namespace crucible::minhash
