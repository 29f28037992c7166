// Batch drivers over a string column: MinHash signatures (normalise, shingle, hash and
// permutation-min in one pass per document) and the xxh64 hashes of every shingle.
#pragma once

#include <cstddef>
#include <cstdint>

#include "permute.h"
#include "string_column.h"
#include "tokenize.h"

namespace crucible::minhash {

// out: docs.rows x perms.size() row-major. A document without shingles gets
// perms.empty_value() everywhere.
void minhash_signatures(const StringColumn& docs, const Permutations& perms, size_t ngram,
                        ShingleMode mode, int threads, uint64_t* out);

// doc_offsets (docs.rows + 1): where each document's shingle hashes start in the flat output,
// doc_offsets[rows] their total.
void shingle_offsets(const StringColumn& docs, size_t ngram, ShingleMode mode, int threads,
                     int64_t* doc_offsets);

// out[doc_offsets[i] .. doc_offsets[i+1]): xxh64 (seed 0) of every shingle of document i, in
// document order, duplicates kept.
void shingle_hashes(const StringColumn& docs, size_t ngram, ShingleMode mode, int threads,
                    const int64_t* doc_offsets, uint64_t* out);

}  // namespace crucible::minhash
