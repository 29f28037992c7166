// LSH band keys of MinHash signatures: for band i (signature values i*r .. i*r+r-1), xxh64 of
// those r values as little-endian uint64 bytes, seed i.
#pragma once

#include <cstddef>
#include <cstdint>

namespace crucible::minhash {

// signatures: rows x num_perm row-major; out: rows x bands. Requires bands * r <= num_perm.
void band_keys(const uint64_t* signatures, size_t rows, size_t num_perm, size_t bands, size_t r,
               int threads, uint64_t* out);

}  // namespace crucible::minhash
