// Dense little-endian bit packing of signed b-bit integer codes (b = 2..8).
//
// Byte layout (pinned by tests/golden/codec_bitpack.json):
//   * value v (an int8 in [-2^(b-1), 2^(b-1) - 1]) is stored as the unsigned field
//     u = v + 2^(b-1) in [0, 2^b)  ("offset binary"; -2^(b-1) -> 0, 0 -> 2^(b-1));
//   * value i occupies stream bits [i*b, (i+1)*b), least significant bit first, where
//     stream bit k is bit (k % 8) of byte k / 8 (a little-endian bitstream);
//   * the stream has ceil(count*b / 8) bytes; the unused high bits of the last byte are 0.
// Worked example, b = 6, values [-32, 0, 31, 1]:
//   u = [0, 32, 63, 33] = 0b000000, 0b100000, 0b111111, 0b100001
//   byte 0 = u0 | (u1 & 3) << 6 = 0x00, byte 1 = u1 >> 2 | (u2 & 15) << 4 = 0xF8,
//   byte 2 = u2 >> 4 | u3 << 2 = 0x87  ->  bytes 00 F8 87.
#pragma once
#include <cstddef>
#include <cstdint>

namespace pgolf {

// Number of bytes of `count` packed values of `bits` bits.
size_t packed_size(size_t count, int bits);

// Pack codes[0..count) into out[0..packed_size). Throws std::invalid_argument naming the
// first index whose value is outside [-2^(bits-1), 2^(bits-1) - 1].
void pack_bits(const int8_t* codes, size_t count, int bits, uint8_t* out);

// Throws stream_error unless nbytes == packed_size(count, bits).
void check_packed_length(size_t nbytes, int bits, size_t count);

// Unpack `count` values from data[0..nbytes). Throws stream_error when nbytes is not
// packed_size(count, bits) or the padding bits of the last byte are not zero.
void unpack_bits(const uint8_t* data, size_t nbytes, int bits, size_t count, int8_t* out);

}  // namespace pgolf
