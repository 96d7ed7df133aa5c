// UTF-8 helpers shared by the text kernels (csrc/cpu/hash_text.cpp) and the JSONL reader
// (csrc/cpu/jsonl.cpp).
#pragma once
#include <cstdint>

namespace mmfast {

// The UTF-8 bytes of code point `code` (at most U+10FFFF) into `out`; returns how many (1-4).
inline int encode_utf8(uint32_t code, uint8_t* out) {
  if (code < 0x80) {
    out[0] = static_cast<uint8_t>(code);
    return 1;
  }
  if (code < 0x800) {
    out[0] = static_cast<uint8_t>(0xC0 | (code >> 6));
    out[1] = static_cast<uint8_t>(0x80 | (code & 0x3F));
    return 2;
  }
  if (code < 0x10000) {
    out[0] = static_cast<uint8_t>(0xE0 | (code >> 12));
    out[1] = static_cast<uint8_t>(0x80 | ((code >> 6) & 0x3F));
    out[2] = static_cast<uint8_t>(0x80 | (code & 0x3F));
    return 3;
  }
  out[0] = static_cast<uint8_t>(0xF0 | (code >> 18));
  out[1] = static_cast<uint8_t>(0x80 | ((code >> 12) & 0x3F));
  out[2] = static_cast<uint8_t>(0x80 | ((code >> 6) & 0x3F));
  out[3] = static_cast<uint8_t>(0x80 | (code & 0x3F));
  return 4;
}

}  // namespace mmfast
