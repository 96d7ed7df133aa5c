// The two ends of `mmfast classify`'s stream in C++: a chunk of JSONL manifest lines read into
// Records (mmfast.data.manifest), and the predicted rows written as JSONL text
// (mmfast.predictions). In Python each line cost a decoded struct, a Record and a handful of list
// passes, each row an f-string and a JSON escape: together two thirds of the main thread's time.
//
// The reader takes the manifests it can read exactly as the Python path does and declines the
// rest: it returns None for the whole chunk, which then goes through msgspec and, line by line,
// json (their results and error messages are the contract). It declines anything it is not sure
// of: a line that is not one JSON object, a key with an escape, a field of the wrong type, a
// missing id or text, a repeated field, "label" (the one-label form), a lone surrogate, bytes
// that are not UTF-8, nesting deeper than kMaxDepth, a number longer than kMaxNumber, an image
// path that Path would normalize. So it never reads a line differently; at worst it is not faster.
//
// The scan runs without the GIL (the classify worker's torch ops go on meanwhile); the Python
// objects are made after it, with the GIL.
#include <pybind11/pybind11.h>

#include <array>
#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "common/python_io.h"
#include "common/utf8.h"

namespace py = pybind11;

namespace mmfast {
namespace {

constexpr int kMaxDepth = 64;      // json.loads recurses per level; msgspec has its own limit
constexpr int64_t kMaxNumber = 600;  // json.loads refuses integers of over 4300 digits

// The fields a record reads, in the order of the `keys` argument.
enum Field : int { kId, kImage, kText, kLabels, kLabel, kImageId, kFields, kOther = kFields };

// A JSON string's bytes inside the chunk, quotes excluded; `escaped`: it holds a backslash.
struct Span {
  const uint8_t* begin = nullptr;
  const uint8_t* end = nullptr;
  bool escaped = false;
};

struct Line {
  int64_t number;
  Span field[kFields];
  bool present[kFields] = {};
  int64_t labels_begin = 0, labels_count = 0;  // into Scan::labels; a string "labels" is one
};

inline bool is_space(uint8_t c) { return c == ' ' || c == '\t' || c == '\r'; }

// JSON's two-character escapes: the character after the backslash, and the byte it stands for.
constexpr std::array<std::pair<uint8_t, uint8_t>, 8> kShortEscapes = {{
    {'"', '"'}, {'\\', '\\'}, {'/', '/'}, {'b', '\b'}, {'f', '\f'}, {'n', '\n'}, {'r', '\r'},
    {'t', '\t'}}};

// The byte `\<letter>` stands for, or -1 where it is not a short escape.
inline int unescaped(uint8_t letter) {
  for (const auto& [escape, byte] : kShortEscapes) {
    if (escape == letter) return byte;
  }
  return -1;
}

inline int hex_value(uint8_t c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

// Four hex digits at p (p + 4 <= end), or -1.
inline int32_t hex4(const uint8_t* p, const uint8_t* end) {
  if (end - p < 4) return -1;
  int32_t value = 0;
  for (int i = 0; i < 4; ++i) {
    const int digit = hex_value(p[i]);
    if (digit < 0) return -1;
    value = value * 16 + digit;
  }
  return value;
}

// The length of the UTF-8 sequence at p as Python's strict decoder takes it (no overlong form, no
// surrogate, nothing above U+10FFFF), or 0.
inline int utf8_length(const uint8_t* p, const uint8_t* end) {
  const uint8_t c = p[0];
  auto continuation = [&](int i, uint8_t low = 0x80, uint8_t high = 0xBF) {
    return p + i < end && p[i] >= low && p[i] <= high;
  };
  if (c >= 0xC2 && c <= 0xDF) return continuation(1) ? 2 : 0;
  if (c >= 0xE0 && c <= 0xEF) {
    const uint8_t low = c == 0xE0 ? 0xA0 : 0x80, high = c == 0xED ? 0x9F : 0xBF;
    return continuation(1, low, high) && continuation(2) ? 3 : 0;
  }
  if (c >= 0xF0 && c <= 0xF4) {
    const uint8_t low = c == 0xF0 ? 0x90 : 0x80, high = c == 0xF4 ? 0x8F : 0xBF;
    return continuation(1, low, high) && continuation(2) && continuation(3) ? 4 : 0;
  }
  return 0;
}

// One line's JSON, read as far as a record needs; every function returns false to decline.
class LineParser {
 public:
  LineParser(const uint8_t* end, const std::array<std::string_view, kFields>& keys,
             std::vector<Span>& labels)
      : end_(end), keys_(keys), labels_(labels) {}

  bool record(const uint8_t* p, Line& line) {
    p_ = p;
    if (!take('{') || closes('}')) return false;  // {}: no id, no text
    for (bool done = false; !done;) {
      Span key;
      if (!string(key) || key.escaped) return false;
      const Field field = field_of(key);
      skip_space();
      if (!take(':')) return false;
      skip_space();
      if (field == kLabel || (field != kOther && line.present[field])) return false;
      if (field == kLabels) {
        if (!label_list(line)) return false;
      } else if (field != kOther) {
        if (!string(line.field[field])) return false;
      } else if (!skip_value(1)) {
        return false;
      }
      if (field != kOther) line.present[field] = true;
      if (!after_element('}', done)) return false;
    }
    skip_space();
    return p_ == end_ && line.present[kId] && line.present[kText];
  }

 private:
  void skip_space() {
    while (p_ < end_ && is_space(*p_)) ++p_;
  }

  // Spaces, then `close` taken if it is next: an empty object or array.
  bool closes(uint8_t close) {
    skip_space();
    return take(close);
  }

  // What follows an element of an object or array: a comma (another element follows) or
  // `close` (`done`); false for anything else.
  bool after_element(uint8_t close, bool& done) {
    skip_space();
    done = !take(',');
    if (done) return take(close);
    skip_space();
    return true;
  }

  bool take(uint8_t c) {
    if (p_ >= end_ || *p_ != c) return false;
    ++p_;
    return true;
  }

  Field field_of(const Span& key) const {
    const std::string_view name(reinterpret_cast<const char*>(key.begin), key.end - key.begin);
    for (int field = 0; field < kFields; ++field) {
      if (name == keys_[field]) return static_cast<Field>(field);
    }
    return kOther;
  }

  // A JSON string at p_; its bytes checked (controls, escapes, UTF-8, surrogate pairs).
  bool string(Span& span) {
    if (!take('"')) return false;
    span.begin = p_;
    span.escaped = false;
    while (p_ < end_) {
      const uint8_t c = *p_;
      if (c == '"') {
        span.end = p_++;
        return true;
      }
      if (c < 0x20) return false;
      if (c < 0x80 && c != '\\') {
        ++p_;
        continue;
      }
      if (c >= 0x80) {
        const int length = utf8_length(p_, end_);
        if (!length) return false;
        p_ += length;
        continue;
      }
      span.escaped = true;
      if (++p_ >= end_) return false;
      const uint8_t kind = *p_++;
      if (kind == 'u') {
        const int32_t unit = hex4(p_, end_);
        if (unit < 0 || (unit >= 0xDC00 && unit <= 0xDFFF)) return false;  // a lone low half
        p_ += 4;
        if (unit >= 0xD800 && unit <= 0xDBFF) {  // a high half: its low half must follow
          if (end_ - p_ < 6 || p_[0] != '\\' || p_[1] != 'u') return false;
          const int32_t low = hex4(p_ + 2, end_);
          if (low < 0xDC00 || low > 0xDFFF) return false;
          p_ += 6;
        }
      } else if (unescaped(kind) < 0) {
        return false;
      }
    }
    return false;
  }

  bool label_list(Line& line) {
    line.labels_begin = static_cast<int64_t>(labels_.size());
    Span label;
    if (p_ < end_ && *p_ == '"') {
      if (!string(label)) return false;
      labels_.push_back(label);
    } else {
      if (!take('[')) return false;
      for (bool done = closes(']'); !done;) {
        if (!string(label)) return false;
        labels_.push_back(label);
        if (!after_element(']', done)) return false;
      }
    }
    line.labels_count = static_cast<int64_t>(labels_.size()) - line.labels_begin;
    return true;
  }

  bool literal(const char* word) {
    const size_t length = std::strlen(word);
    if (static_cast<size_t>(end_ - p_) < length || std::memcmp(p_, word, length)) return false;
    p_ += length;
    return true;
  }

  bool digits() {
    const uint8_t* start = p_;
    while (p_ < end_ && *p_ >= '0' && *p_ <= '9') ++p_;
    return p_ > start;
  }

  bool number() {
    const uint8_t* start = p_;
    if (p_ < end_ && *p_ == '-') ++p_;
    if (p_ < end_ && *p_ == '0') {
      ++p_;
    } else if (!(p_ < end_ && *p_ >= '1' && *p_ <= '9') || !digits()) {
      return false;
    }
    if (p_ < end_ && *p_ == '.' && (++p_, !digits())) return false;
    if (p_ < end_ && (*p_ == 'e' || *p_ == 'E')) {
      ++p_;
      if (p_ < end_ && (*p_ == '+' || *p_ == '-')) ++p_;
      if (!digits()) return false;
    }
    return p_ - start <= kMaxNumber;
  }

  // Any JSON value of a field no record reads, checked and passed over.
  bool skip_value(int depth) {
    if (p_ >= end_ || depth > kMaxDepth) return false;
    Span ignored;
    switch (*p_) {
      case '"':
        return string(ignored);
      case 't':
        return literal("true");
      case 'f':
        return literal("false");
      case 'n':
        return literal("null");
      case '[':
      case '{': {
        const bool object = *p_++ == '{';
        const uint8_t close = object ? '}' : ']';
        for (bool done = closes(close); !done;) {
          if (object) {
            if (!string(ignored)) return false;
            skip_space();
            if (!take(':')) return false;
            skip_space();
          }
          if (!skip_value(depth + 1) || !after_element(close, done)) return false;
        }
        return true;
      }
      default:
        return number();
    }
  }

  const uint8_t* p_ = nullptr;
  const uint8_t* end_;
  const std::array<std::string_view, kFields>& keys_;
  std::vector<Span>& labels_;
};

// The UTF-8 of a checked JSON string: its bytes, or with escapes their decoding into `out`.
std::string_view utf8_of(const Span& span, std::string& out) {
  if (!span.escaped) {
    return {reinterpret_cast<const char*>(span.begin), static_cast<size_t>(span.end - span.begin)};
  }
  out.clear();
  for (const uint8_t* p = span.begin; p < span.end;) {
    if (*p != '\\') {
      out.push_back(static_cast<char>(*p++));
      continue;
    }
    const uint8_t kind = p[1];
    p += 2;
    if (kind != 'u') {
      out.push_back(static_cast<char>(unescaped(kind)));  // the parser checked it is one
      continue;
    }
    uint32_t code = static_cast<uint32_t>(hex4(p, span.end));
    p += 4;
    if (code >= 0xD800 && code <= 0xDBFF) {  // the parser checked the low half is there
      code = 0x10000 + ((code - 0xD800) << 10) + (static_cast<uint32_t>(hex4(p + 2, span.end))
                                                   - 0xDC00);
      p += 6;
    }
    uint8_t bytes[4];
    out.append(reinterpret_cast<const char*>(bytes), encode_utf8(code, bytes));
  }
  return out;
}

// An image path that reads as Python makes it: none, absolute, or relative and joined to the
// manifest's directory as it is (mmfast.data.manifest._plain: no "//", "/.", leading "." or
// trailing "/", which Path would normalize) and without escapes.
bool joins_as_python(const Span& image) {
  if (image.end == image.begin || *image.begin == '/') return true;
  const std::string_view path(reinterpret_cast<const char*>(image.begin), image.end - image.begin);
  return !image.escaped && path.find("//") == std::string_view::npos
         && path.find("/.") == std::string_view::npos && path.front() != '.' && path.back() != '/';
}

py::str utf8_str(std::string_view bytes) {
  PyObject* text = PyUnicode_DecodeUTF8(bytes.data(), static_cast<Py_ssize_t>(bytes.size()),
                                        "strict");
  if (!text) throw py::error_already_set();
  return py::reinterpret_steal<py::str>(text);
}

struct Scan {
  std::vector<Line> lines;
  std::vector<Span> labels;
  int64_t rows;
  bool declined = false;
};

// Python's bytes.lstrip() whitespace: what makes a line blank to Manifest's reading.
inline bool is_strip_space(uint8_t c) { return c == ' ' || (c >= '\t' && c <= '\r'); }

void scan(const uint8_t* data, int64_t size, int64_t first, int64_t shard_index,
          int64_t shard_count, const std::array<std::string_view, kFields>& keys, Scan& out) {
  const uint8_t* end = data + size;
  int64_t number = first;
  for (const uint8_t* line = data; line < end; ++number) {
    const uint8_t* stop = static_cast<const uint8_t*>(std::memchr(line, '\n', end - line));
    if (!stop) stop = end;
    const uint8_t* head = line;
    while (head < stop && is_strip_space(*head)) ++head;
    if (head < stop) {
      // a line that lstrip may not call blank where str.strip() does: Python's reading decides
      if ((*head >= 0x1C && *head < 0x20) || *head >= 0x80) {
        out.declined = true;
        return;
      }
      if (out.rows++ % shard_count == shard_index) {
        for (const uint8_t* p = line; p < head; ++p) {
          if (!is_space(*p)) {  // \v or \f: not JSON whitespace
            out.declined = true;
            return;
          }
        }
        Line record{number};
        LineParser parser(stop, keys, out.labels);
        if (!parser.record(head, record) || !joins_as_python(record.field[kImage])) {
          out.declined = true;
          return;
        }
        out.lines.push_back(record);
      }
    }
    line = stop + 1;
  }
}

}  // namespace

py::object read_jsonl_records(py::bytes chunk, int64_t first, int64_t rows, int64_t shard_index,
                              int64_t shard_count, py::tuple keys, py::str prefix,
                              py::object record_type) {
  if (keys.size() != kFields) throw py::value_error("read_jsonl_records: expected 6 keys");
  if (shard_count < 1 || shard_index < 0 || shard_index >= shard_count) {
    throw py::value_error("read_jsonl_records: expected 0 <= shard_index < shard_count");
  }
  std::array<std::string, kFields> key_bytes;
  std::array<std::string_view, kFields> key_views;
  for (int field = 0; field < kFields; ++field) {
    key_bytes[field] = keys[field].cast<std::string>();
    key_views[field] = key_bytes[field];
  }
  const std::string prefix_bytes = prefix.cast<std::string>();
  const char* data = PyBytes_AS_STRING(chunk.ptr());
  const int64_t size = PyBytes_GET_SIZE(chunk.ptr());

  Scan found;
  found.rows = rows;
  {
    py::gil_scoped_release unlocked;  // `chunk` is immutable and held by the caller
    scan(reinterpret_cast<const uint8_t*>(data), size, first, shard_index, shard_count, key_views,
         found);
  }
  if (found.declined) return py::none();

  py::list numbers(found.lines.size()), records(found.lines.size());
  const py::str empty("");
  std::string scratch, image;
  for (size_t i = 0; i < found.lines.size(); ++i) {
    const Line& line = found.lines[i];
    py::tuple labels(line.labels_count);
    for (int64_t j = 0; j < line.labels_count; ++j) {
      labels[j] = utf8_str(utf8_of(found.labels[line.labels_begin + j], scratch));
    }
    py::object image_path = empty;
    if (const Span& span = line.field[kImage]; span.end > span.begin) {  // joins_as_python
      image.assign(utf8_of(span, scratch));
      if (*span.begin != '/') image.insert(0, prefix_bytes);
      image_path = utf8_str(image);
    }
    py::object image_id = line.present[kImageId]
                              ? py::object(utf8_str(utf8_of(line.field[kImageId], scratch)))
                              : py::object(empty);
    py::str id = utf8_str(utf8_of(line.field[kId], scratch));
    py::str text = utf8_str(utf8_of(line.field[kText], scratch));
    records[i] = record_type(id, image_path, text, labels, image_id);
    numbers[i] = py::int_(line.number);
  }
  return py::make_tuple(found.rows, numbers, records);
}

namespace {

// json.dumps(text, ensure_ascii=False) of UTF-8 text: quotes, backslashes and controls escaped.
void append_json_string(std::string& out, const char* text, Py_ssize_t size) {
  static constexpr char kHex[] = "0123456789abcdef";
  out.push_back('"');
  for (Py_ssize_t i = 0; i < size; ++i) {
    const uint8_t c = static_cast<uint8_t>(text[i]);
    if (c >= 0x20 && c != '"' && c != '\\') {
      out.push_back(static_cast<char>(c));
      continue;
    }
    out.push_back('\\');
    char letter = 0;
    for (const auto& [escape, byte] : kShortEscapes) {
      if (byte == c && escape != '/') letter = static_cast<char>(escape);  // json leaves / alone
    }
    if (letter) {
      out.push_back(letter);
    } else {
      out.append("u00");
      out.push_back(kHex[c >> 4]);
      out.push_back(kHex[c & 15]);
    }
  }
  out.push_back('"');
}

// micro / 10^6 (micro in [0, 10^6]) as repr(round(score, 6)) spells it: D.DDDDDD without its
// trailing zeros, one decimal kept (mmfast.predictions._decimal_texts).
void append_micro(std::string& out, int64_t micro) {
  char digits[8];
  digits[0] = static_cast<char>('0' + micro / 1000000);
  digits[1] = '.';
  int64_t rest = micro % 1000000;
  for (int place = 7; place >= 2; --place) {
    digits[place] = static_cast<char>('0' + rest % 10);
    rest /= 10;
  }
  int last = 7;
  while (last > 2 && digits[last] == '0') --last;
  out.append(digits, last + 1);
}

template <typename T>
const T* buffer_of(const py::buffer& values, const char* name, int64_t size) {
  const py::buffer_info info = values.request();
  if (info.itemsize != sizeof(T) || info.ndim != 1 || info.size != size
      || (size > 1 && info.strides[0] != static_cast<py::ssize_t>(sizeof(T)))) {
    throw py::value_error(std::string("json_rows: ") + name + " must be a contiguous 1-D buffer of "
                          + std::to_string(size) + " " + std::to_string(sizeof(T) * 8)
                          + "-bit values");
  }
  return static_cast<const T*>(info.ptr);
}

}  // namespace

py::object json_rows(py::list ids, py::list label_json, py::buffer indices, py::buffer micro,
                     py::object counts, int64_t k) {
  const int64_t items = static_cast<int64_t>(ids.size());
  const int64_t* per_item = nullptr;
  int64_t total = items * k;
  if (!counts.is_none()) {
    per_item = buffer_of<int64_t>(counts, "counts", items);
    total = 0;
    for (int64_t i = 0; i < items; ++i) total += per_item[i];
  }
  const int64_t* label = buffer_of<int64_t>(indices, "indices", total);
  const int64_t* score = buffer_of<int64_t>(micro, "micro", total);
  std::vector<std::string_view> names(label_json.size());
  for (size_t i = 0; i < names.size(); ++i) {
    Py_ssize_t size;
    const char* text = PyUnicode_AsUTF8AndSize(label_json[i].ptr(), &size);
    if (!text) throw py::error_already_set();
    names[i] = {text, static_cast<size_t>(size)};
  }
  std::string out;
  out.reserve(static_cast<size_t>(items) * 64);
  int64_t next = 0;
  for (int64_t i = 0; i < items; ++i) {
    Py_ssize_t size;
    const char* id = PyUnicode_AsUTF8AndSize(ids[i].ptr(), &size);
    if (!id) {  // not UTF-8 (a lone surrogate): Python's writer says what it does with it
      PyErr_Clear();
      return py::none();
    }
    out.append("{\"id\": ");
    append_json_string(out, id, size);
    out.append(", \"labels\": [");
    const int64_t chosen = per_item ? per_item[i] : k;
    for (int64_t j = 0; j < chosen; ++j) {
      if (j) out.append(", ");
      const int64_t index = label[next + j];
      if (index < 0 || index >= static_cast<int64_t>(names.size())) {
        throw py::index_error("json_rows: a label index is out of range");
      }
      out.append(names[index]);
    }
    out.append("], \"scores\": [");
    for (int64_t j = 0; j < chosen; ++j) {
      if (j) out.append(", ");
      const int64_t value = score[next + j];
      if (value < 0 || value > 1000000) throw py::value_error("json_rows: micro out of range");
      append_micro(out, value);
    }
    out.append("]}\n");
    next += chosen;
  }
  return utf8_str(out);
}

}  // namespace mmfast
