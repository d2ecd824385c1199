// Bit packing kernels: 8 values <-> b bytes per step with 64-bit SWAR arithmetic.
// Layout: see bitpack.h. Needs a little-endian host (8 int8 codes are loaded as one uint64).
#include "bitpack.h"

#include <algorithm>
#include <cstring>
#include <stdexcept>
#include <string>
#include <type_traits>

#include "errors.h"

static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "pgolf codec assumes a little-endian host");

namespace pgolf {
namespace {

constexpr uint64_t kOnes = 0x0101010101010101ULL;
constexpr uint64_t kHigh = 0x8080808080808080ULL;
constexpr size_t kBlock = 1024;  // values between two range checks in pack

// Bytewise (x + y) and (x - y) mod 256, no carries across bytes.
inline uint64_t add_bytes(uint64_t x, uint64_t y) { return ((x & ~kHigh) + (y & ~kHigh)) ^ ((x ^ y) & kHigh); }
inline uint64_t sub_bytes(uint64_t x, uint64_t y) { return ((x | kHigh) - (y & ~kHigh)) ^ ((x ^ ~y) & kHigh); }

// 8 offset fields u_j < 2^B (one per byte of u) -> 8B bits, field j at bit j*B.
template <int B>
inline uint64_t compact(uint64_t u) {
    if constexpr (B == 8) {
        return u;
    } else {
        u = (u & 0x00FF00FF00FF00FFULL) | ((u & 0xFF00FF00FF00FF00ULL) >> (8 - B));      // 2B bits per 16-bit lane
        u = (u & 0x0000FFFF0000FFFFULL) | ((u & 0xFFFF0000FFFF0000ULL) >> (16 - 2 * B));  // 4B bits per 32-bit lane
        return (u & 0xFFFFFFFFULL) | ((u >> 32) << (4 * B));
    }
}

// Inverse of compact: 8B bits -> one field per byte.
template <int B>
inline uint64_t spread(uint64_t x) {
    if constexpr (B == 8) {
        return x;
    } else {
        constexpr uint64_t m4 = (1ULL << (4 * B)) - 1;
        constexpr uint64_t m2 = ((1ULL << (2 * B)) - 1) * 0x0000000100000001ULL;
        constexpr uint64_t m1 = ((1ULL << B) - 1) * 0x0001000100010001ULL;
        x = (x & m4) | ((x >> (4 * B)) << 32);
        x = (x & m2) | ((x & (m2 << (2 * B))) << (16 - 2 * B));
        return (x & m1) | ((x & (m1 << B)) << (8 - B));
    }
}

[[noreturn]] void throw_out_of_range(const int8_t* codes, size_t begin, size_t end, int bits) {
    const int lo = -(1 << (bits - 1)), hi = (1 << (bits - 1)) - 1;
    for (size_t i = begin; i < end; ++i) {
        if (codes[i] < lo || codes[i] > hi) {
            throw std::invalid_argument("value " + std::to_string(codes[i]) + " at index " + std::to_string(i) +
                                        " is outside the " + std::to_string(bits) + "-bit range [" +
                                        std::to_string(lo) + ", " + std::to_string(hi) + "]");
        }
    }
    throw std::logic_error("pack_bits: range check found no offending value");
}

template <int B>
void pack_impl(const int8_t* codes, size_t count, uint8_t* out) {
    if constexpr (B == 8) {  // every int8 is in range: a plain byte loop the compiler vectorises
        for (size_t i = 0; i < count; ++i) out[i] = uint8_t(codes[i]) ^ 0x80;
        return;
    }
    constexpr uint64_t off = kOnes * (1u << (B - 1));
    constexpr uint64_t over = kOnes * (uint8_t)(0xFFu << B);  // bits that must be 0 in every field
    const size_t full = count / 8;
    const size_t nbytes = (count * B + 7) / 8;
    const size_t wide = nbytes >= 8 ? (nbytes - 8) / B + 1 : 0;  // steps i with B*i + 8 <= nbytes
    for (size_t b0 = 0; b0 < full; b0 += kBlock / 8) {
        const size_t b1 = b0 + kBlock / 8 < full ? b0 + kBlock / 8 : full;
        uint64_t bad = 0;
        for (size_t i = b0; i < b1; ++i) {
            uint64_t x;
            std::memcpy(&x, codes + 8 * i, 8);
            const uint64_t u = add_bytes(x, off);
            bad |= u & over;
            const uint64_t packed = compact<B>(u);
            // A full 8-byte store where it fits (its zero high bytes are overwritten by the
            // next step); exactly B bytes at the very end.
            if (i < wide) std::memcpy(out + B * i, &packed, 8);
            else std::memcpy(out + B * i, &packed, B);
        }
        if (bad) throw_out_of_range(codes, 8 * b0, 8 * b1, B);
    }
    const size_t rem = count - 8 * full;
    if (rem) {
        int8_t tail[8];
        std::memset(tail, -(1 << (B - 1)), 8);  // field 0: zero padding bits
        std::memcpy(tail, codes + 8 * full, rem);
        uint64_t x;
        std::memcpy(&x, tail, 8);
        const uint64_t u = add_bytes(x, off);
        if (u & over) throw_out_of_range(codes, 8 * full, count, B);
        const uint64_t packed = compact<B>(u);
        std::memcpy(out + B * full, &packed, (rem * B + 7) / 8);
    }
}

template <int B>
void unpack_impl(const uint8_t* data, size_t count, int8_t* out) {
    if constexpr (B == 8) {
        for (size_t i = 0; i < count; ++i) out[i] = int8_t(data[i] ^ 0x80);
        return;
    }
    constexpr uint64_t off = kOnes * (1u << (B - 1));
    constexpr uint64_t low = B == 8 ? ~0ULL : (1ULL << (8 * B)) - 1;
    const size_t full = count / 8;
    const size_t nbytes = (count * B + 7) / 8;
    const size_t wide = std::min(full, nbytes >= 8 ? (nbytes - 8) / B + 1 : 0);  // B*i + 8 <= nbytes
    size_t i = 0;
    for (; i < wide; ++i) {  // a full 8-byte load, masked to the step's 8B bits
        uint64_t x;
        std::memcpy(&x, data + B * i, 8);
        const uint64_t v = sub_bytes(spread<B>(x & low), off);
        std::memcpy(out + 8 * i, &v, 8);
    }
    for (; i < full; ++i) {
        uint64_t x = 0;
        std::memcpy(&x, data + B * i, B);
        const uint64_t v = sub_bytes(spread<B>(x), off);
        std::memcpy(out + 8 * i, &v, 8);
    }
    const size_t rem = count - 8 * full;
    if (rem) {
        uint64_t x = 0;
        std::memcpy(&x, data + B * full, (rem * B + 7) / 8);
        const uint64_t v = sub_bytes(spread<B>(x), off);
        std::memcpy(out + 8 * full, &v, rem);
    }
}

// Calls fn(std::integral_constant<int, bits>) for bits in 2..8 (checked by the caller).
template <typename Fn>
void with_bits(int bits, Fn&& fn) {
    using std::integral_constant;
    switch (bits) {
        case 2: return fn(integral_constant<int, 2>());
        case 3: return fn(integral_constant<int, 3>());
        case 4: return fn(integral_constant<int, 4>());
        case 5: return fn(integral_constant<int, 5>());
        case 6: return fn(integral_constant<int, 6>());
        case 7: return fn(integral_constant<int, 7>());
        default: return fn(integral_constant<int, 8>());
    }
}

void check_bits(int bits) {
    if (bits < 2 || bits > 8) throw std::invalid_argument("bits must be in 2..8, got " + std::to_string(bits));
}

}  // namespace

size_t packed_size(size_t count, int bits) {
    check_bits(bits);
    if (count > SIZE_MAX / 8) throw std::invalid_argument("count too large: " + std::to_string(count));
    return (count * bits + 7) / 8;
}

void pack_bits(const int8_t* codes, size_t count, int bits, uint8_t* out) {
    check_bits(bits);
    with_bits(bits, [&](auto b) { pack_impl<decltype(b)::value>(codes, count, out); });
}

void check_packed_length(size_t nbytes, int bits, size_t count) {
    const size_t want = packed_size(count, bits);
    if (nbytes != want) {
        throw stream_error("packed data has " + std::to_string(nbytes) + " bytes; " + std::to_string(count) +
                           " values of " + std::to_string(bits) + " bits need exactly " + std::to_string(want));
    }
}

void unpack_bits(const uint8_t* data, size_t nbytes, int bits, size_t count, int8_t* out) {
    check_packed_length(nbytes, bits, count);
    const unsigned used = (count * bits) % 8;
    if (used && (data[nbytes - 1] >> used)) {
        throw stream_error("packed data has nonzero padding bits in its last byte (value " +
                           std::to_string(data[nbytes - 1]) + ")");
    }
    with_bits(bits, [&](auto b) { unpack_impl<decltype(b)::value>(data, count, out); });
}

}  // namespace pgolf
