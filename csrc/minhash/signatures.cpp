// MinHash signatures and shingle hashes of a string column (see signatures.h). Documents are
// handed to worker threads in chunks; each worker owns its normalisation buffer and hash list.
#include "signatures.h"

#include <algorithm>
#include <vector>

#include "parallel.h"
#include "sha1.h"
#include "xxhash64.h"

namespace crucible::minhash {
namespace {

constexpr size_t kDocsPerChunk = 16;

struct SignatureScratch {
  NormalizedText text;
  std::vector<uint64_t> hashes;
  std::vector<uint64_t> minima;
};

}  // namespace

void minhash_signatures(const StringColumn& docs, const Permutations& perms, size_t ngram,
                        ShingleMode mode, int threads, uint64_t* out) {
  const size_t num_perm = perms.size();
  const Sha1Hash32 sha1_hash32 = sha1_hash32_impl();
  parallel_chunks<SignatureScratch>(
      docs.rows, kDocsPerChunk, threads, [&](SignatureScratch& s, size_t begin, size_t end) {
        s.minima.resize(perms.padded_size());
        for (size_t i = begin; i < end; ++i) {
          s.text.assign(docs.begin(i), docs.length(i), mode);
          s.hashes.clear();
          if (perms.kind() == HashKind::kXxh64) {
            s.text.for_each_shingle(ngram, mode, [&](const uint8_t* p, size_t n) {
              s.hashes.push_back(mod_mersenne61(xxh64(p, n)));
            });
          } else {
            s.text.for_each_shingle(ngram, mode, [&](const uint8_t* p, size_t n) {
              s.hashes.push_back(sha1_hash32(p, n));
            });
          }
          uint64_t* row = out + i * num_perm;
          if (s.hashes.empty()) {
            std::fill(row, row + num_perm, perms.empty_value());
            continue;
          }
          perms.min_over(s.hashes.data(), s.hashes.size(), s.minima.data());
          std::copy(s.minima.begin(), s.minima.begin() + num_perm, row);
        }
      });
}

void shingle_offsets(const StringColumn& docs, size_t ngram, ShingleMode mode, int threads,
                     int64_t* doc_offsets) {
  doc_offsets[0] = 0;
  struct NoScratch {};
  parallel_chunks<NoScratch>(docs.rows, 256, threads, [&](NoScratch&, size_t begin, size_t end) {
    for (size_t i = begin; i < end; ++i) {
      doc_offsets[i + 1] =
          static_cast<int64_t>(count_shingles(docs.begin(i), docs.length(i), ngram, mode));
    }
  });
  for (size_t i = 0; i < docs.rows; ++i) doc_offsets[i + 1] += doc_offsets[i];
}

void shingle_hashes(const StringColumn& docs, size_t ngram, ShingleMode mode, int threads,
                    const int64_t* doc_offsets, uint64_t* out) {
  parallel_chunks<NormalizedText>(
      docs.rows, kDocsPerChunk, threads, [&](NormalizedText& text, size_t begin, size_t end) {
        for (size_t i = begin; i < end; ++i) {
          text.assign(docs.begin(i), docs.length(i), mode);
          uint64_t* w = out + doc_offsets[i];
          text.for_each_shingle(ngram, mode,
                                [&](const uint8_t* p, size_t n) { *w++ = xxh64(p, n); });
        }
      });
}

}  // namespace crucible::minhash
