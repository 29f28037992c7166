// Exact shingle-set Jaccard of document pairs (see jaccard.h). Each document's shingles become
// (xxh64, byte range) records, sorted by hash then bytes and deduplicated, and the two sorted
// sets are merged. Equal hashes alone never make two shingles equal: the bytes decide, so
// the result is exact even under 64-bit hash collisions.
#include "jaccard.h"

#include <algorithm>
#include <cstring>
#include <vector>

#include "parallel.h"
#include "xxhash64.h"

namespace crucible::minhash {
namespace {

struct ShingleRef {
  uint64_t hash;
  const uint8_t* bytes;
  size_t size;
};

// -1, 0, 1 as x orders before, equal to, after y: by hash, then by bytes.
int compare(const ShingleRef& x, const ShingleRef& y) {
  if (x.hash != y.hash) return x.hash < y.hash ? -1 : 1;
  const int c = std::memcmp(x.bytes, y.bytes, std::min(x.size, y.size));
  if (c != 0) return c < 0 ? -1 : 1;
  return x.size == y.size ? 0 : (x.size < y.size ? -1 : 1);
}

struct ShingleSet {
  NormalizedText text;
  std::vector<ShingleRef> refs;

  void build(const StringColumn& docs, size_t row, size_t ngram, ShingleMode mode) {
    text.assign(docs.begin(row), docs.length(row), mode);
    refs.clear();
    text.for_each_shingle(ngram, mode, [&](const uint8_t* p, size_t n) {
      refs.push_back({xxh64(p, n), p, n});
    });
    std::sort(refs.begin(), refs.end(),
              [](const ShingleRef& x, const ShingleRef& y) { return compare(x, y) < 0; });
    refs.erase(std::unique(refs.begin(), refs.end(),
                           [](const ShingleRef& x, const ShingleRef& y) {
                             return compare(x, y) == 0;
                           }),
               refs.end());
  }
};

struct PairScratch {
  ShingleSet left, right;
};

double set_jaccard(const std::vector<ShingleRef>& x, const std::vector<ShingleRef>& y) {
  if (x.empty() && y.empty()) return 0.0;
  size_t i = 0, j = 0, common = 0;
  while (i < x.size() && j < y.size()) {
    const int c = compare(x[i], y[j]);
    common += c == 0;
    i += c <= 0;
    j += c >= 0;
  }
  return static_cast<double>(common) / static_cast<double>(x.size() + y.size() - common);
}

}  // namespace

void jaccard_pairs(const StringColumn& docs, const int64_t* left, const int64_t* right,
                   size_t pairs, size_t ngram, ShingleMode mode, int threads, double* out) {
  parallel_chunks<PairScratch>(pairs, 8, threads, [&](PairScratch& s, size_t begin, size_t end) {
    for (size_t k = begin; k < end; ++k) {
      s.left.build(docs, static_cast<size_t>(left[k]), ngram, mode);
      if (right[k] == left[k]) {
        out[k] = s.left.refs.empty() ? 0.0 : 1.0;
        continue;
      }
      s.right.build(docs, static_cast<size_t>(right[k]), ngram, mode);
      out[k] = set_jaccard(s.left.refs, s.right.refs);
    }
  });
}

}  // namespace crucible::minhash
