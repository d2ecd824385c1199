// Context-modelled coder for quantised weight matrices: an adaptive binary arithmetic coder whose
// probabilities come from a logistic mix of context models built on weight-matrix structure.
// Pinned by tests/golden/codec_ctx.json (version 3) and tests/golden/codec_ctx_v2.json (version 2,
// still decoded; no longer written).
//
// Stream layout (varint = unsigned LEB128, at most 5 bytes, value < 2^32):
//   0  3 bytes  magic "PGC"
//   3  u8       version: 3 (written), or 2 (read; version 1, an earlier model, is rejected)
//   4  u8       bits, 2..8: every value lies in [-2^(bits-1), 2^(bits-1) - 1]
//   5  varint   K, the number of matrices (0..65536); the values of all of them total <= 2^32
//   then K matrix headers: varint rows, varint cols, u8 flags (bit 0 transposed: the coded
//        matrix is the transpose, cols x rows; bit 1 permuted: a row order follows; bit 2
//        (version 3) prior: the matrix is coded with a column prior the caller supplies, see
//        below; other bits 0)
//   version 2 only: then, for every permuted matrix in order, its row order: the coded matrix's R
//        rows (R = cols if transposed, else rows) as a permutation perm[0..R) (coded row i is row
//        perm[i]), ceil(log2 R) bits per entry, packed LSB first into ceil(R * width / 8) bytes,
//        padding bits 0
//   then the arithmetic-coded payload, to the end of the stream, every byte consumed.
//
// Payload: the matrices one after another; each coded matrix row by row (rows in perm order),
// each row left to right. Version 3 codes a permuted matrix's row order in the payload just before
// its values: entry i as its rank r among the rows not yet listed (0 <= r < R - i), r's bits
// most significant first (ceil(log2(R - i)) of them), each bit with probability of a 1 =
// (how many ranks below R - i have this prefix and the bit set) / (how many have this prefix),
// in 12 bits, clamped to [1, 4095]; a bit that only one value can take is not coded. Any decoded
// ranks form a permutation, so the order costs log2(R!) bits rather than R ceil(log2 R).
// The model state (context counters, mixer weights, the running mean of |v|) carries over from
// matrix to matrix; the per-column and per-row activities restart.
//
// Column prior (version 3, flag bit 2): a class 0..15 per column of the matrix as given (not as
// coded), which the caller supplies to the encoder and again to the decoder (pgolf's artifact
// uses the rank class of the row scales of the matrix that feeds those columns). For a
// transposed matrix it becomes a class per coded row, permuted with the rows. It replaces the
// context of model 0 (below) for that matrix, in a table of its own.
//
// Binary arithmetic coder: 32-bit low x1 / high x2 (x1 = 0, x2 = 2^32 - 1 at the start), 12-bit
// probability p of a 1 (1..4095): xmid = x1 + floor((x2 - x1) * p / 4096); a 1 keeps
// [x1, xmid], a 0 keeps [xmid + 1, x2]; while the top bytes of x1 and x2 agree, that byte is
// written, x1 <<= 8, x2 = (x2 << 8) | 255. At the end the 4 bytes of x1 are written, big-endian.
// The decoder reads 4 bytes into x, then one byte per shift; it decodes a 1 iff x <= xmid.
//
// Binarisation of a value v (qpos = 2^(bits-1) - 1, qneg = 2^(bits-1)):
//   node 0: v != 0; then node 1: v < 0; then m = |v| in unary: for k = 1, 2, ... while k < mmax
//   (mmax = qneg if v < 0, else qpos): the bit m > k at node 2 + min(k - 1, 11); stop after a 0.
//
// Context model for each binary decision (all integer arithmetic; see ctxcoder.cpp for the
// exact tables and update rules, which the format depends on):
//   neighbours: ref = the value at the same column in the previous coded row, ref2 two rows back
//   (0 when absent); mean = the column's running signed mean (rate 1/16, rounded);
//   activities: ca = running mean of |v| down the column (rate 1/8), cs = the same at rate 1/32
//   (version 3: rate 1/256, and over a column's first values, the i-th of them (i = 1, 2, ...)
//   at rate 1/2^min(bitlen(i), 3) for ca and 1/2^min(bitlen(i), 8) for cs: near-means of the
//   values so far, the matrix's start value counting as one);
//   run = how many values in a row so far equal the value above them. Neighbours enter as
//   cls(u) = clamp(u, -9, 9), mirrored (-u) once the value is known to be negative.
//   Adaptive-probability models, each per node, indexed by (ca, cs) (for a matrix with a column
//   prior (prior class, ca) instead, in a table of its own), (diff(ref), cls(ref2), run bucket)
//   with diff(u) = clamp(u - k, -4, 4) (k: the unary threshold, 0 for the zero and sign
//   decisions), (cls(mean), ca), and in version 2 only a fourth, (cls(ref), ca / 2); mixed in the
//   logistic domain with a bias by a weight set chosen by (node, ca / 4), then the coder step;
//   every model and weight updates after the bit.
#pragma once
#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

namespace pgolf {

constexpr int kCtxPriorClasses = 16;  // a column prior's classes: 0..15

struct CtxMatrix {
    const int8_t* codes;  // rows x cols, row-major
    uint64_t rows, cols;
    const uint8_t* prior = nullptr;  // optional: a class 0..15 for each of the cols columns
};

// Encode the matrices (values in the `bits` range) as one version-3 stream. `force_flags` < 0:
// the encoder picks, per matrix, plain / transposed / row-permuted (greedy L1 nearest-neighbour
// order) / both, by coding each variant alone with a fresh model (and the matrix's prior, if it
// has one), then keeps the smallest whole stream of: that choice, that choice without the priors,
// every matrix plain, and the variant most matrices chose for every matrix. 0..3 forces those flags on every matrix, and the prior on every matrix
// that has one (tests). Throws std::invalid_argument naming the first out-of-range value or
// prior class.
std::vector<uint8_t> ctx_encode(const std::vector<CtxMatrix>& mats, int bits, int force_flags);

// A parsed and validated stream, ready to decode. Throws stream_error on any malformed input.
class CtxStream {
  public:
    CtxStream(const uint8_t* data, size_t size);
    ~CtxStream();
    int version() const;
    int bits() const;
    size_t count() const;
    uint64_t rows(size_t k) const;
    uint64_t cols(size_t k) const;
    int flags(size_t k) const;
    uint64_t total_values() const;
    // Decode matrix k into outs[k] (rows(k) * cols(k) values, row-major), for every k. priors[k]
    // (cols(k) classes, or nullptr) is read only for a matrix whose flags say it was coded with a
    // prior (priors may be shorter than the matrices, or empty); such a matrix without one is a
    // stream_error, a class above 15 std::invalid_argument. Throws stream_error when the payload
    // is corrupt.
    void decode(const std::vector<int8_t*>& outs, const std::vector<const uint8_t*>& priors) const;

  private:
    struct Impl;
    std::unique_ptr<Impl> impl_;
};

}  // namespace pgolf
