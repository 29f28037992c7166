// Exact Jaccard similarity of the shingle sets of document pairs, to verify LSH candidates.
#pragma once

#include <cstddef>
#include <cstdint>

#include "string_column.h"
#include "tokenize.h"

namespace crucible::minhash {

// out[k] = |S(left[k]) & S(right[k])| / |S(left[k]) | S(right[k])| where S(d) is the set of
// shingles of document d; 0.0 when both sets are empty (nothing to compare, so never a near
// duplicate). Indices must be valid rows of docs.
void jaccard_pairs(const StringColumn& docs, const int64_t* left, const int64_t* right,
                   size_t pairs, size_t ngram, ShingleMode mode, int threads, double* out);

}  // namespace crucible::minhash
