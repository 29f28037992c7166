// LSH band keys (see band_keys.h): each band's r signature values are hashed straight from the
// signature row, which is already their little-endian byte image on the (little-endian) host.
#include "band_keys.h"

#include "parallel.h"
#include "xxhash64.h"

namespace crucible::minhash {

void band_keys(const uint64_t* signatures, size_t rows, size_t num_perm, size_t bands, size_t r,
               int threads, uint64_t* out) {
  struct NoScratch {};
  parallel_chunks<NoScratch>(rows, 1024, threads, [&](NoScratch&, size_t begin, size_t end) {
    for (size_t i = begin; i < end; ++i) {
      const uint64_t* sig = signatures + i * num_perm;
      for (size_t band = 0; band < bands; ++band) {
        out[i * bands + band] =
            xxh64(reinterpret_cast<const uint8_t*>(sig + band * r), r * sizeof(uint64_t), band);
      }
    }
  });
}

}  // namespace crucible::minhash
