// Normalisation of UTF-8 documents into space-joined lower-cased tokens (see tokenize.h), and
// the shingle count of a document for sizing outputs before hashing.
#include "tokenize.h"

#include <array>
#include <string_view>

namespace crucible::minhash {
namespace {

// The byte itself with A-Z lower-cased, or kSeparator | ' ' for ASCII whitespace
// (" \t\n\r\v\f") and ASCII punctuation: the low byte is what normalisation writes either
// way. UTF-8 multi-byte sequences never contain ASCII bytes, so they pass through whole.
constexpr uint16_t kSeparator = 0x100;

constexpr std::array<uint16_t, 256> make_byte_table() {
  std::array<uint16_t, 256> table{};
  for (int c = 0; c < 256; ++c) table[c] = static_cast<uint16_t>(c);
  for (int c = 'A'; c <= 'Z'; ++c) table[c] = static_cast<uint16_t>(c + 32);
  for (const char c : std::string_view(" \t\n\r\v\f!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~")) {
    table[static_cast<uint8_t>(c)] = kSeparator | ' ';
  }
  return table;
}
constexpr std::array<uint16_t, 256> kByteTable = make_byte_table();

inline bool is_utf8_lead(uint8_t c) { return (c & 0xC0) != 0x80; }

}  // namespace

void NormalizedText::assign(const uint8_t* data, size_t size, ShingleMode mode) {
  // Normalising never lengthens a text: each token byte maps to one byte, and each separator
  // run to at most one space. A text of n bytes has at most (n + 1) / 2 tokens.
  if (text_.size() < size + 1) text_.resize(size + 1);
  if (token_start_.size() < size / 2 + 2) token_start_.resize(size / 2 + 2);
  uint8_t* const out = text_.data();
  size_t* const starts = token_start_.data();
  // Branch-free: every byte is written, the write position advances for a token byte or for
  // the first separator after a token (which becomes the joining space).
  size_t w = 0, tokens = 0;
  bool prev_token = false;
  for (size_t i = 0; i < size; ++i) {
    const uint16_t c = kByteTable[data[i]];
    const bool token = !(c & kSeparator);
    starts[tokens] = w;
    tokens += token & !prev_token;
    out[w] = static_cast<uint8_t>(c);
    w += token | prev_token;
    prev_token = token;
  }
  size_ = w - (tokens && !prev_token);  // drop the space after the last token
  tokens_ = tokens;
  if (mode == ShingleMode::kChar) {
    char_start_.clear();
    for (size_t i = 0; i < size_; ++i) {
      if (is_utf8_lead(out[i])) char_start_.push_back(i);
    }
    char_start_.push_back(size_);
  }
}

size_t count_shingles(const uint8_t* data, size_t size, size_t ngram, ShingleMode mode) {
  size_t tokens = 0, token_chars = 0;
  bool in_token = false;
  for (size_t i = 0; i < size; ++i) {
    const bool separator = kByteTable[data[i]] & kSeparator;
    tokens += !separator && !in_token;
    token_chars += !separator && is_utf8_lead(data[i]);
    in_token = !separator;
  }
  // Word mode counts tokens; char mode counts the code points of the tokens plus one space
  // between each pair of them.
  const size_t units =
      mode == ShingleMode::kWord ? tokens : token_chars + (tokens ? tokens - 1 : 0);
  if (units == 0) return 0;
  return units < ngram ? 1 : units - ngram + 1;
}

}  // namespace crucible::minhash
