// Bounded reading of a coded stream: every read checks what is left and throws stream_error naming
// the stream kind and the field, so a malformed or truncated input can never read out of bounds.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

#include "errors.h"

namespace pgolf {

class StreamReader {
  public:
    // `kind` names the stream in error messages, e.g. "rANS stream"; it must outlive the reader.
    StreamReader(const uint8_t* p, size_t n, const char* kind) : p_(p), n_(n), kind_(kind) {}
    size_t pos() const { return pos_; }
    size_t left() const { return n_ - pos_; }
    uint8_t u8(const char* what) {
        if (pos_ >= n_) throw stream_error(std::string(kind_) + " truncated: missing " + what);
        return p_[pos_++];
    }
    // LEB128, at most 5 bytes, value < 2^32.
    uint32_t varint(const char* what) {
        uint64_t v = 0;
        for (int i = 0; i < 5; ++i) {
            const uint8_t b = u8(what);
            v |= uint64_t(b & 0x7F) << (7 * i);
            if (!(b & 0x80)) {
                if (v > 0xFFFFFFFFULL) break;
                return uint32_t(v);
            }
        }
        throw stream_error(std::string(kind_) + " has an invalid varint for " + what);
    }
    const uint8_t* take(uint64_t n, const char* what) {
        if (n > left())
            throw stream_error(std::string(kind_) + " truncated: " + what + " needs " + std::to_string(n) +
                               " bytes, " + std::to_string(left()) + " left");
        const uint8_t* q = p_ + pos_;
        pos_ += size_t(n);
        return q;
    }

  private:
    const uint8_t* p_;
    size_t n_, pos_ = 0;
    const char* kind_;
};

}  // namespace pgolf
