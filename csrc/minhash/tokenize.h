// Tokens and shingles of UTF-8 text, as curation/dedup/reference.py specifies them.
//
// A document is normalised once into a reusable buffer: its tokens (split at ASCII whitespace
// and ASCII punctuation, ASCII letters lower-cased, every other byte kept) joined by single
// spaces. Both kinds of shingle are then byte ranges of that buffer, hashed in place:
//   word mode: tokens i .. i+n-1 (one shingle of all tokens when there are fewer than n);
//   char mode: code points i .. i+n-1 (one shingle of the whole text when it is shorter).
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

namespace crucible::minhash {

enum class ShingleMode { kWord, kChar };

// One normalised document; reused across documents (buffers only grow).
class NormalizedText {
 public:
  void assign(const uint8_t* data, size_t size, ShingleMode mode);

  const uint8_t* bytes() const { return text_.data(); }
  size_t size() const { return size_; }
  size_t token_count() const { return tokens_; }

  // Calls fn(begin, length) for every shingle in document order (duplicates kept).
  template <class Fn>
  void for_each_shingle(size_t ngram, ShingleMode mode, Fn&& fn) const;

 private:
  std::vector<uint8_t> text_;
  size_t size_ = 0;
  std::vector<size_t> token_start_;  // byte offset of each token in text_ (tokens_ of them)
  size_t tokens_ = 0;
  std::vector<size_t> char_start_;   // char mode: byte offset of each code point, then size_
};

// The number of shingles of a document, without normalising it into a buffer.
size_t count_shingles(const uint8_t* data, size_t size, size_t ngram, ShingleMode mode);

template <class Fn>
void NormalizedText::for_each_shingle(size_t ngram, ShingleMode mode, Fn&& fn) const {
  const uint8_t* const text = text_.data();
  if (mode == ShingleMode::kWord) {
    const size_t tokens = tokens_;
    if (tokens == 0) return;
    if (tokens < ngram) {
      fn(text, size_);
      return;
    }
    // Shingle i ends where token i+n begins, less its separating space (or at the end).
    for (size_t i = 0; i + ngram < tokens; ++i) {
      fn(text + token_start_[i], token_start_[i + ngram] - 1 - token_start_[i]);
    }
    const size_t last = token_start_[tokens - ngram];
    fn(text + last, size_ - last);
    return;
  }
  const size_t chars = char_start_.size() - 1;
  if (chars == 0) return;
  if (chars < ngram) {
    fn(text, size_);
    return;
  }
  for (size_t i = 0; i + ngram <= chars; ++i) {
    fn(text + char_start_[i], char_start_[i + ngram] - char_start_[i]);
  }
}

}  // namespace crucible::minhash
