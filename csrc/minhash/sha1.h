// SHA-1 (FIPS 180-4) of a byte range, reduced to datasketch's sha1_hash32: the first four bytes
// of the digest read as a little-endian uint32. Only used for datasketch parity mode.
#pragma once

#include <cstddef>
#include <cstdint>

namespace crucible::minhash {

using Sha1Hash32 = uint32_t (*)(const uint8_t* data, size_t size);

// The fastest implementation for this CPU: the SHA-NI instructions where present (see
// cpu_features.h), else portable C++. Both give identical results.
Sha1Hash32 sha1_hash32_impl();

uint32_t sha1_hash32_portable(const uint8_t* data, size_t size);

}  // namespace crucible::minhash
