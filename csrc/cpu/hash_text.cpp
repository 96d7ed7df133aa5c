// Text to embedding-bag ids on the CPU (mmfast.ops.hash_text, mmfast.ops.count_words): the
// tokenizer, vocabulary lookup and word n-gram hashing of mmfast.nn.fasttext.TextHasher in one
// pass over UTF-8 bytes, a thread per block of texts.
//
// Tokenization is Python's `re.findall(r"\w+", text.lower())`. Both halves come from the table
// `fold` [0x110000] the wrapper builds with Python itself: fold[c] is the lower-case code point of
// c when that is a word character, -1 when it is not (a token ends there), and -2 where lower()
// is not one code point for one (U+0130 lowers to two; a capital sigma lowers by its context).
// A text holding a -2 character is flagged and left to the Python tokenizer, so the ids are
// exactly the reference's for every text.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstring>
#include <string_view>
#include <vector>

#include "common/checks.h"
#include "common/utf8.h"

namespace mmfast {
namespace {

constexpr int64_t kCodePoints = 0x110000;
constexpr int32_t kNotWord = -1;
constexpr int32_t kNeedsPython = -2;

// 32-bit FNV-1a, the n-gram hash (mmfast.nn.fasttext.fnv1a_32), fed a byte at a time.
constexpr uint32_t kFnv32Offset = 0x811C9DC5u;
constexpr uint32_t kFnv32Prime = 0x01000193u;
inline uint32_t fnv32(uint32_t hash, uint8_t byte) { return (hash ^ byte) * kFnv32Prime; }

// The vocabulary table's slot hash (internal: any good hash would do): eight bytes a step, where
// FNV-1a's multiply chain takes one.
inline uint64_t mix(uint64_t hash, uint64_t word) {
  hash = (hash ^ word) * 0xBF58476D1CE4E5B9ull;
  return hash ^ (hash >> 31);
}

inline uint64_t slot_hash(const uint8_t* bytes, int64_t size) {
  uint64_t hash = 0x9E3779B97F4A7C15ull ^ static_cast<uint64_t>(size);
  int64_t i = 0;
  for (; i + 8 <= size; i += 8) {
    uint64_t word;
    std::memcpy(&word, bytes + i, sizeof(word));
    hash = mix(hash, word);
  }
  if (i < size) {  // the last 1-7 bytes, read one by one: nothing past the end is touched
    uint64_t word = 0;
    for (int64_t b = 0; i + b < size; ++b) word |= uint64_t(bytes[i + b]) << (8 * b);
    hash = mix(hash, word);
  }
  return hash;
}

// One code point of UTF-8 as Python writes it with "surrogatepass" (well formed, lone surrogates
// allowed); returns its length in bytes. A truncated sequence at `end` reads as U+FFFD.
inline int decode_utf8(const uint8_t* p, const uint8_t* end, uint32_t& code) {
  const uint8_t lead = p[0];
  if (lead < 0x80) {
    code = lead;
    return 1;
  }
  const int size = lead >= 0xF0 ? 4 : lead >= 0xE0 ? 3 : 2;
  if (end - p < size) {
    code = 0xFFFD;
    return static_cast<int>(end - p);
  }
  code = lead & (0x7F >> size);
  for (int i = 1; i < size; ++i) code = (code << 6) | (p[i] & 0x3F);
  return size;
}

// A text's tokens, lower-cased, as UTF-8 end to end in `bytes` with token t at
// [starts[t], starts[t + 1]), and each token's FNV-1a 32 state: an n-gram's hash goes on from
// its first token's instead of hashing that token's bytes again. Reused from text to text by a
// thread; `bytes` only grows, and is written through a pointer (a push_back per byte cost a
// capacity check each).
struct Tokens {
  std::vector<uint8_t> bytes;
  std::vector<int64_t> starts;
  std::vector<uint32_t> fnv;

  int64_t size() const { return static_cast<int64_t>(starts.size()) - 1; }
  const uint8_t* data(int64_t t) const { return bytes.data() + starts[t]; }
  int64_t length(int64_t t) const { return starts[t + 1] - starts[t]; }
  std::string_view view(int64_t t) const {
    return {reinterpret_cast<const char*>(data(t)), static_cast<size_t>(length(t))};
  }
};

// Splits text [begin, end) into `tokens`; false when it holds a character the table leaves to
// Python (kNeedsPython).
bool tokenize(const uint8_t* begin, const uint8_t* end, const int32_t* fold, Tokens& tokens) {
  // a character lowers to at most 4 UTF-8 bytes and takes at least 1: a thread's scratch is
  // four times the longest text it has read (a check per character instead cost 5%)
  const size_t most = 4 * static_cast<size_t>(end - begin);
  if (tokens.bytes.size() < most) tokens.bytes.resize(most);
  uint8_t* const out = tokens.bytes.data();
  int64_t written = 0;
  uint32_t hash = kFnv32Offset;
  tokens.starts.assign(1, 0);
  tokens.fnv.clear();
  bool in_token = false;
  for (const uint8_t* p = begin; p < end;) {
    int32_t folded;
    if (*p < 0x80) {  // ASCII, most text: no decoding, and it folds to ASCII
      folded = fold[*p++];
    } else {
      uint32_t code;
      p += decode_utf8(p, end, code);
      folded = code < kCodePoints ? fold[code] : kNotWord;
    }
    if (folded == kNeedsPython) return false;
    if (folded >= 0 && folded < 0x80) {
      out[written++] = static_cast<uint8_t>(folded);
      hash = fnv32(hash, static_cast<uint8_t>(folded));
      in_token = true;
    } else if (folded >= 0) {
      const int size = encode_utf8(static_cast<uint32_t>(folded), out + written);
      for (int b = 0; b < size; ++b) hash = fnv32(hash, out[written + b]);
      written += size;
      in_token = true;
    } else if (in_token) {
      tokens.starts.push_back(written);
      tokens.fnv.push_back(hash);
      hash = kFnv32Offset;
      in_token = false;
    }
  }
  if (in_token) {
    tokens.starts.push_back(written);
    tokens.fnv.push_back(hash);
  }
  return true;
}

// x % divisor for 32-bit x, by two multiplications instead of a 64-bit division (which took a
// tenth of hash_text's time): Lemire, Kaser and Kurz, "Faster remainder by direct computation"
// (2019), exact for every 32-bit x and divisor. A divisor of 2^32 or more leaves x as it is.
class Modulo32 {
 public:
  explicit Modulo32(int64_t divisor)
      : divisor_(static_cast<uint64_t>(divisor)),
        wide_(divisor_ >> 32 != 0),
        inverse_(wide_ ? 0 : ~uint64_t(0) / divisor_ + 1) {}  // 0 for 1, which works: x % 1 = 0

  uint32_t operator()(uint32_t x) const {
    if (wide_) return x;
    const uint64_t fraction = inverse_ * x;
    return static_cast<uint32_t>((static_cast<unsigned __int128>(fraction) * divisor_) >> 64);
  }

 private:
  uint64_t divisor_;
  bool wide_;
  uint64_t inverse_;
};

// Open addressing over the vocabulary words: table[slot] is a word's index or -1, the slot found
// by linear probing from slot_hash(word) modulo the power-of-two table size.
struct Vocabulary {
  const uint8_t* bytes;
  const int64_t* offsets;
  const int64_t* table;
  uint64_t mask;

  int64_t find(const uint8_t* word, int64_t size) const {
    for (uint64_t slot = slot_hash(word, size) & mask;; slot = (slot + 1) & mask) {
      const int64_t index = table[slot];
      if (index < 0) return -1;
      const int64_t start = offsets[index];
      if (offsets[index + 1] - start == size && std::memcmp(bytes + start, word, size) == 0) {
        return index;
      }
    }
  }
};

void check_bytes(const char* op, const char* name, const at::Tensor& bytes) {
  TORCH_CHECK_VALUE(bytes.device().is_cpu(), op, ": ", name, " must be a CPU tensor, got ",
                    bytes.device());
  TORCH_CHECK_TYPE(bytes.scalar_type() == at::kByte, op, ": ", name,
                   " must be uint8 (UTF-8 bytes), got ", bytes.scalar_type());
  MMFAST_CHECK_DIM(op, name, bytes, 1);
}

// offsets [n + 1] int64, non-decreasing from 0 to the byte count: item i is [offsets[i],
// offsets[i + 1]).
void check_offsets(const char* op, const char* name, const at::Tensor& offsets, int64_t bytes) {
  TORCH_CHECK_VALUE(offsets.device().is_cpu(), op, ": ", name, " must be a CPU tensor, got ",
                    offsets.device());
  TORCH_CHECK_TYPE(offsets.scalar_type() == at::kLong, op, ": ", name, " must be int64, got ",
                   offsets.scalar_type());
  MMFAST_CHECK_DIM(op, name, offsets, 1);
  TORCH_CHECK_VALUE(offsets.numel() >= 1, op, ": ", name, " must hold at least the end offset");
  const int64_t* o = offsets.const_data_ptr<int64_t>();
  const int64_t n = offsets.numel() - 1;
  TORCH_CHECK_VALUE(o[0] == 0 && o[n] == bytes, op, ": ", name, " must run from 0 to ", bytes,
                    " (the byte count), got ", o[0], " to ", o[n]);
  for (int64_t i = 0; i < n; ++i) {
    TORCH_CHECK_VALUE(o[i] <= o[i + 1], op, ": ", name, " must not decrease, got ", o[i],
                      " before ", o[i + 1], " at ", i);
  }
}

void check_fold(const char* op, const at::Tensor& fold) {
  TORCH_CHECK_VALUE(fold.device().is_cpu(), op, ": fold must be a CPU tensor, got ",
                    fold.device());
  TORCH_CHECK_TYPE(fold.scalar_type() == at::kInt, op, ": fold must be int32, got ",
                   fold.scalar_type());
  TORCH_CHECK_VALUE(fold.dim() == 1 && fold.numel() == kCodePoints, op,
                    ": fold must have shape [", kCodePoints, "], got ", fold.sizes());
}

// Texts per parallel block: enough work to amortize a block's scratch, many blocks per thread
// so uneven texts balance.
constexpr int64_t kTextsPerBlock = 256;

std::tuple<at::Tensor, at::Tensor, at::Tensor> hash_text_cpu(
    const at::Tensor& text, const at::Tensor& text_offsets, const at::Tensor& fold,
    const at::Tensor& vocabulary, const at::Tensor& vocabulary_offsets,
    const at::Tensor& vocabulary_table, int64_t buckets, int64_t ngrams) {
  constexpr const char* kOp = "hash_text";
  check_bytes(kOp, "text", text);
  check_bytes(kOp, "vocabulary", vocabulary);
  const at::Tensor bytes = text.contiguous(), words = vocabulary.contiguous();
  const at::Tensor starts = text_offsets.contiguous(), word_starts = vocabulary_offsets.contiguous();
  check_offsets(kOp, "text_offsets", starts, bytes.numel());
  check_offsets(kOp, "vocabulary_offsets", word_starts, words.numel());
  check_fold(kOp, fold);
  const at::Tensor table = vocabulary_table.contiguous();
  const int64_t slots = table.numel();
  TORCH_CHECK_TYPE(table.scalar_type() == at::kLong && table.dim() == 1, kOp,
                   ": vocabulary_table must be 1-D int64, got ", table.scalar_type(), " ",
                   table.sizes());
  const int64_t num_words = word_starts.numel() - 1;
  TORCH_CHECK_VALUE(slots > num_words && (slots & (slots - 1)) == 0, kOp,
                    ": vocabulary_table must have a power-of-two size above the vocabulary's ",
                    num_words, " words (from _text_vocabulary_table), got ", slots);
  // Every word in one slot, -1 in the rest: a probe then always ends, and in bounds.
  int64_t empty = 0;
  for (const int64_t* slot = table.const_data_ptr<int64_t>(), *end = slot + slots; slot < end;
       ++slot) {
    TORCH_CHECK_INDEX(*slot >= -1 && *slot < num_words, kOp, ": vocabulary_table must hold -1 "
                      "or word indices below ", num_words, ", got ", *slot);
    empty += *slot == -1;
  }
  TORCH_CHECK_VALUE(empty == slots - num_words, kOp, ": vocabulary_table must have ",
                    slots - num_words, " empty slots (-1) for its ", num_words,
                    " words, got ", empty);
  TORCH_CHECK_VALUE(ngrams >= 1, kOp, ": ngrams must be >= 1, got ", ngrams);
  TORCH_CHECK_VALUE(ngrams == 1 || buckets >= 1, kOp,
                    ": buckets must be >= 1 when ngrams > 1, got ", buckets);

  const int64_t count = starts.numel() - 1;
  const int64_t base = num_words;  // n-gram ids follow the vocabulary's
  const Vocabulary lookup{words.const_data_ptr<uint8_t>(), word_starts.const_data_ptr<int64_t>(),
                          table.const_data_ptr<int64_t>(), static_cast<uint64_t>(slots - 1)};
  const uint8_t* data = bytes.const_data_ptr<uint8_t>();
  const int64_t* start = starts.const_data_ptr<int64_t>();
  const at::Tensor fold_table = fold.contiguous();  // kept alive while the pointer is read
  const int32_t* folded = fold_table.const_data_ptr<int32_t>();

  at::Tensor sizes = at::zeros({count}, starts.options());
  at::Tensor fallback = at::zeros({count}, starts.options().dtype(at::kBool));
  int64_t* size_of = sizes.data_ptr<int64_t>();
  bool* needs_python = fallback.data_ptr<bool>();
  const int64_t blocks = (count + kTextsPerBlock - 1) / kTextsPerBlock;
  std::vector<std::vector<int64_t>> block_ids(blocks);
  const Modulo32 bucket_of(ngrams > 1 ? buckets : 1);
  at::parallel_for(0, blocks, 1, [&](int64_t first, int64_t last) {
    Tokens tokens;
    for (int64_t block = first; block < last; ++block) {
      std::vector<int64_t>& ids = block_ids[block];
      const int64_t end = std::min(count, (block + 1) * kTextsPerBlock);
      for (int64_t i = block * kTextsPerBlock; i < end; ++i) {
        const size_t before = ids.size();
        if (!tokenize(data + start[i], data + start[i + 1], folded, tokens)) {
          needs_python[i] = true;
          continue;
        }
        const int64_t num_tokens = tokens.size();
        for (int64_t t = 0; t < num_tokens; ++t) {
          const int64_t id = lookup.find(tokens.data(t), tokens.length(t));
          if (id >= 0) ids.push_back(id);
        }
        for (int64_t n = 2; n <= ngrams; ++n) {
          for (int64_t first_token = 0; first_token + n <= num_tokens; ++first_token) {
            uint32_t hash = tokens.fnv[first_token];
            for (int64_t t = first_token + 1; t < first_token + n; ++t) {
              hash = fnv32(hash, ' ');  // " ".join(ngram)
              const uint8_t* token = tokens.data(t);
              for (int64_t b = 0, size = tokens.length(t); b < size; ++b) {
                hash = fnv32(hash, token[b]);
              }
            }
            ids.push_back(base + bucket_of(hash));
          }
        }
        size_of[i] = static_cast<int64_t>(ids.size() - before);
      }
    }
  });

  at::Tensor offsets = at::empty({count}, starts.options());
  int64_t* offset = offsets.data_ptr<int64_t>();
  int64_t total = 0;
  for (int64_t i = 0; i < count; ++i) {
    offset[i] = total;
    total += size_of[i];
  }
  at::Tensor ids = at::empty({total}, starts.options());
  int64_t* out = ids.data_ptr<int64_t>();
  at::parallel_for(0, blocks, 1, [&](int64_t first, int64_t last) {
    for (int64_t block = first; block < last; ++block) {
      const std::vector<int64_t>& chunk = block_ids[block];
      std::copy(chunk.begin(), chunk.end(), out + offset[block * kTextsPerBlock]);
    }
  });
  return {ids, offsets, fallback};
}

// The open-addressing table Vocabulary::find probes: a power of two of at least twice the words.
at::Tensor text_vocabulary_table_cpu(const at::Tensor& vocabulary,
                                     const at::Tensor& vocabulary_offsets) {
  constexpr const char* kOp = "_text_vocabulary_table";
  check_bytes(kOp, "vocabulary", vocabulary);
  const at::Tensor words = vocabulary.contiguous(), word_starts = vocabulary_offsets.contiguous();
  check_offsets(kOp, "vocabulary_offsets", word_starts, words.numel());
  const int64_t count = word_starts.numel() - 1;
  int64_t slots = 2;
  while (slots < 2 * count) slots *= 2;
  at::Tensor table = at::full({slots}, -1, word_starts.options());
  int64_t* slot_of = table.data_ptr<int64_t>();
  const uint8_t* data = words.const_data_ptr<uint8_t>();
  const int64_t* start = word_starts.const_data_ptr<int64_t>();
  const Vocabulary lookup{data, start, slot_of, static_cast<uint64_t>(slots - 1)};
  for (int64_t i = 0; i < count; ++i) {
    const int64_t size = start[i + 1] - start[i];
    TORCH_CHECK_VALUE(lookup.find(data + start[i], size) < 0, kOp,
                      ": vocabulary must not repeat a word, got word ", i, " twice");
    uint64_t slot = slot_hash(data + start[i], size) & (slots - 1);
    while (slot_of[slot] >= 0) slot = (slot + 1) & (slots - 1);
    slot_of[slot] = i;
  }
  return table;
}

// Distinct tokens and their counts: open addressing on slot_hash over the tokens' bytes, kept end
// to end in one arena (a std::unordered_map<std::string> allocated a node and a string per
// distinct token and took twice as long over 100k documents).
class TokenCounts {
 public:
  void add(std::string_view word, int64_t n) {
    const auto* bytes = reinterpret_cast<const uint8_t*>(word.data());
    const int64_t size = static_cast<int64_t>(word.size());
    const uint64_t hash = slot_hash(bytes, size);
    if (2 * (entries_.size() + 1) > slots_.size()) grow();
    const uint64_t mask = slots_.size() - 1;
    for (uint64_t slot = hash & mask;; slot = (slot + 1) & mask) {
      const int64_t index = slots_[slot];
      if (index < 0) {
        slots_[slot] = static_cast<int64_t>(entries_.size());
        entries_.push_back({hash, static_cast<int64_t>(arena_.size()), size, n});
        arena_.insert(arena_.end(), bytes, bytes + size);
        return;
      }
      Entry& entry = entries_[index];
      if (entry.hash == hash && entry.size == size &&
          std::memcmp(arena_.data() + entry.start, bytes, size) == 0) {
        entry.count += n;
        return;
      }
    }
  }

  int64_t size() const { return static_cast<int64_t>(entries_.size()); }

  // f(word, count) for every distinct token, in the order first seen.
  template <typename F>
  void for_each(F&& f) const {
    for (const Entry& entry : entries_) {
      f(std::string_view(reinterpret_cast<const char*>(arena_.data()) + entry.start,
                         static_cast<size_t>(entry.size)),
        entry.count);
    }
  }

  void swap(TokenCounts& other) noexcept {
    slots_.swap(other.slots_);
    entries_.swap(other.entries_);
    arena_.swap(other.arena_);
  }

 private:
  struct Entry {
    uint64_t hash;
    int64_t start, size, count;
  };

  void grow() {
    slots_.assign(std::max<size_t>(1024, 2 * slots_.size()), -1);
    const uint64_t mask = slots_.size() - 1;
    for (size_t i = 0; i < entries_.size(); ++i) {
      uint64_t slot = entries_[i].hash & mask;
      while (slots_[slot] >= 0) slot = (slot + 1) & mask;
      slots_[slot] = static_cast<int64_t>(i);
    }
  }

  std::vector<int64_t> slots_;  // an entry's index, or -1; a power of two, at most half full
  std::vector<Entry> entries_;
  std::vector<uint8_t> arena_;
};

// Every distinct token of the texts with its count, most frequent first and, among equals, in
// code-point order (TextHasher.build's vocabulary order): (words as UTF-8 end to end, their
// offsets [V + 1], counts [V], fallback [n] for the texts left to Python, which are not counted).
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> count_words_cpu(
    const at::Tensor& text, const at::Tensor& text_offsets, const at::Tensor& fold) {
  constexpr const char* kOp = "count_words";
  check_bytes(kOp, "text", text);
  const at::Tensor bytes = text.contiguous(), starts = text_offsets.contiguous();
  check_offsets(kOp, "text_offsets", starts, bytes.numel());
  check_fold(kOp, fold);
  const int64_t count = starts.numel() - 1;
  const uint8_t* data = bytes.const_data_ptr<uint8_t>();
  const int64_t* start = starts.const_data_ptr<int64_t>();
  const at::Tensor fold_table = fold.contiguous();  // kept alive while the pointer is read
  const int32_t* folded = fold_table.const_data_ptr<int32_t>();
  at::Tensor fallback = at::zeros({count}, starts.options().dtype(at::kBool));
  bool* needs_python = fallback.data_ptr<bool>();

  // A table per block of texts, merged into the first at the end.
  const int64_t blocks = std::max<int64_t>(1, std::min<int64_t>(
      at::get_num_threads() * 4, (count + kTextsPerBlock - 1) / kTextsPerBlock));
  std::vector<TokenCounts> block_counts(blocks);
  at::parallel_for(0, blocks, 1, [&](int64_t first, int64_t last) {
    Tokens tokens;
    for (int64_t block = first; block < last; ++block) {
      TokenCounts& counts = block_counts[block];
      const int64_t begin = count * block / blocks, end = count * (block + 1) / blocks;
      for (int64_t i = begin; i < end; ++i) {
        if (!tokenize(data + start[i], data + start[i + 1], folded, tokens)) {
          needs_python[i] = true;
          continue;
        }
        for (int64_t t = 0; t < tokens.size(); ++t) counts.add(tokens.view(t), 1);
      }
    }
  });
  TokenCounts& total = block_counts[0];
  for (int64_t block = 1; block < blocks; ++block) {
    block_counts[block].for_each([&](std::string_view word, int64_t n) { total.add(word, n); });
    TokenCounts().swap(block_counts[block]);
  }
  std::vector<std::pair<std::string_view, int64_t>> order;
  order.reserve(total.size());
  total.for_each([&](std::string_view word, int64_t n) { order.emplace_back(word, n); });
  // UTF-8's byte order is its code-point order, so this is Python's (-count, word) sort
  std::sort(order.begin(), order.end(), [](const auto& a, const auto& b) {
    return a.second != b.second ? a.second > b.second : a.first < b.first;
  });
  const int64_t distinct = static_cast<int64_t>(order.size());
  int64_t size = 0;
  for (const auto& entry : order) size += static_cast<int64_t>(entry.first.size());
  at::Tensor words = at::empty({size}, bytes.options());
  at::Tensor offsets = at::empty({distinct + 1}, starts.options());
  at::Tensor counts = at::empty({distinct}, starts.options());
  uint8_t* out = words.data_ptr<uint8_t>();
  int64_t* offset = offsets.data_ptr<int64_t>();
  int64_t* n = counts.data_ptr<int64_t>();
  offset[0] = 0;
  for (int64_t i = 0; i < distinct; ++i) {
    std::memcpy(out + offset[i], order[i].first.data(), order[i].first.size());
    offset[i + 1] = offset[i] + static_cast<int64_t>(order[i].first.size());
    n[i] = order[i].second;
  }
  return {words, offsets, counts, fallback};
}

}  // namespace

TORCH_LIBRARY_IMPL(mmfast, CPU, m) {
  m.impl("hash_text", &hash_text_cpu);
  m.impl("_text_vocabulary_table", &text_vocabulary_table_cpu);
  m.impl("count_words", &count_words_cpu);
}

}  // namespace mmfast
