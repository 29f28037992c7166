// A read-only view of an Arrow string / large_string column: its offsets (int32 or int64,
// n + 1 of them) and its UTF-8 data buffer, used in place (zero copy). Validity is the
// caller's business: a null must arrive as an empty range.
#pragma once

#include <cstddef>
#include <cstdint>

namespace crucible::minhash {

struct StringColumn {
  const int32_t* offsets32 = nullptr;  // exactly one of offsets32 / offsets64 is set
  const int64_t* offsets64 = nullptr;
  const uint8_t* data = nullptr;
  size_t rows = 0;

  size_t offset(size_t i) const {
    return offsets64 ? static_cast<size_t>(offsets64[i]) : static_cast<size_t>(offsets32[i]);
  }
  const uint8_t* begin(size_t i) const { return data + offset(i); }
  size_t length(size_t i) const { return offset(i + 1) - offset(i); }
};

}  // namespace crucible::minhash
