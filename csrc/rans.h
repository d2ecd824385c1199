// rANS entropy coder for quantised int8 code tensors (rows x cols), with symbol statistics
// per group of rows. Pinned by tests/golden/codec_rans.json.
//
// Coder: 32-bit state x in [L, 2^32), L = 2^16, 16-bit renormalisation (one little-endian
// uint16 word at a time), probability precision P = 12..15 bits (the encoder writes 15),
// `lanes` interleaved states: value i (row-major) is coded by state i % lanes. Each value v is
// coded as the symbol u = v + 2^(bits-1), as in bitpack.h.
//
// Stream layout (varint = unsigned LEB128, at most 5 bytes, value < 2^32):
//   0  3 bytes  magic "PGR"
//   3  u8       version (1)
//   4  u8       flags: bit 0 set = 2-D shape (rows, cols); clear = 1-D shape (cols,) with rows = 1.
//               Other bits are 0.
//   5  u8       bits, 2..8
//   6  u8       P, 12..15
//   7  u8       lanes: 1, 2, 4, 8, 16 or 32
//   8  varint rows, varint cols (rows * cols <= 2^32). When rows * cols == 0 the stream ends here.
//      u8 grouping: 0 = one group of all rows; 1 = G contiguous groups, row r in group
//         floor(r * G / rows); 2 = explicit map; 3 = segments (runs of rows, e.g. the tensors
//         of a jointly coded set), one group per segment.
//      grouping 1, 2 or 3: varint G, 2 <= G <= min(rows, 256).
//      grouping 2: the group id of every row, ceil(log2 G) bits each, packed LSB first into
//         ceil(rows * width / 8) bytes (padding bits 0); every id < G.
//      grouping 3: varint K (G <= K <= rows), K varint segment row counts (each >= 1, summing
//         to rows), then the group id of every segment packed as in grouping 2 (K ids).
//      G frequency tables, one per group: u8 lo, u8 hi (lo <= hi < 2^bits), then hi - lo + 1
//         bytes t[lo..hi]: t = 0 marks an absent symbol, t in 1..255 gives the weight
//         w(t) = MANT[(t-1) % 16] << ((t-1) / 16), MANT[i] = round(2^(12 + i/16)), i.e. a
//         1/16-octave log scale. Weights become frequencies summing to 2^P by normalise() in
//         rans.cpp (floor(w * 2^P / sum w), at least 1, then largest remainders get the rest,
//         or the largest frequencies give back the excess); some t must be nonzero.
//      lanes x uint32 LE: the encoder's final states (the decoder's initial ones), each >= L.
//      uint16 LE words to the end of the stream, in decoding order.
//   After the last value every state must be back at L and every word consumed.
// Grouping 3 was added within version 1 (all older streams still decode); a decoder older than
// it rejects such a stream with "grouping 3 unknown" instead of misreading it.
#pragma once
#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

namespace pgolf {

// Encode codes[0..rows*cols) (row-major, int8 values in [-2^(bits-1), 2^(bits-1) - 1]).
// `row_key` (nullable, `rows` floats, e.g. per-row scales) adds groupings of rows sorted by it to
// the candidates; `segments` (empty, or positive row counts summing to rows: the runs of rows
// that belong together, e.g. one tensor each of a jointly coded set) adds groupings that give
// each segment one group; the smallest candidate wins. Throws std::invalid_argument naming the
// first out-of-range value or on bad segments.
std::vector<uint8_t> rans_encode(const int8_t* codes, uint64_t rows, uint64_t cols, bool two_d, int bits,
                                 const float* row_key, const std::vector<uint64_t>& segments);

// A parsed and validated stream, ready to decode. Throws stream_error on any malformed input.
class RansStream {
  public:
    RansStream(const uint8_t* data, size_t size);
    ~RansStream();
    bool two_d() const;
    uint64_t rows() const;
    uint64_t cols() const;
    int bits() const;
    int grouping() const;  // 0 one group, 1 contiguous, 2 mapped, 3 segments (see the layout above)
    int groups() const;
    // Group id of every row (rows entries).
    std::vector<uint16_t> row_groups() const;
    // Decode all rows * cols values into out. Throws stream_error when the payload is corrupt.
    void decode(int8_t* out) const;

  private:
    struct Impl;
    std::unique_ptr<Impl> impl_;
};

}  // namespace pgolf
