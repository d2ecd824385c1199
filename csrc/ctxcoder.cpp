// Context-modelled coder for quantised matrices. Stream layout and model outline: see ctxcoder.h.
// Encoder and decoder run the same template (code_matrix) so their models cannot drift apart.
#include "ctxcoder.h"

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <numeric>
#include <stdexcept>
#include <string>

#include "errors.h"
#include "stream_reader.h"

namespace pgolf {
namespace {

constexpr uint8_t kMagic[3] = {'P', 'G', 'C'};
constexpr uint8_t kVersion = 3;          // written; version 2 is still read
constexpr int kTransposed = 1, kPermuted = 2, kPrior = 4;  // matrix flags
constexpr uint64_t kMaxValues = 1ULL << 32;
constexpr uint32_t kMaxMatrices = 65536;
constexpr uint64_t kMaxPermRows = 8192;  // rows a permuted matrix may have (the encoder's sort is O(R^2 C))
constexpr int kNodes = 14;               // zero flag, sign, 12 unary magnitude nodes
constexpr int kAct = 16;                 // activity buckets
constexpr int kCls = 19;                 // neighbour classes: the value clamped to [-9, 9]
constexpr int kRun = 4;                  // match-run buckets (run_bucket())
constexpr int kDiff = 9;                 // the value above, relative to the decision: diff()
constexpr int kModels = 4;               // version 2's; version 3 uses the first three
constexpr int kInputs = kModels + 1;     // the models and a bias
constexpr int kSets = kNodes * 4;        // mixer weight sets: node x ca / 4
constexpr int kLimit = 1023;             // counter adaptation: rate 1 / (n + 1.5), n <= kLimit
constexpr int kLrShift = 12;             // mixer learning rate: weight step = st * err / 2^kLrShift
constexpr int32_t kInit = 16384;         // initial model weights (65536 = 1.0)
constexpr int32_t kWeightMax = 1 << 22;
constexpr int kSquash[33] = {1,    2,    4,    6,    10,   17,   27,   45,   74,   120,  194,
                             311,  488,  747,  1102, 1546, 2048, 2550, 2994, 3349, 3608, 3785,
                             3902, 3976, 4022, 4051, 4069, 4079, 4086, 4090, 4092, 4094, 4095};

// 4096 / (1 + exp(-d / 256)) for d in [-2047, 2047], linear between the samples of kSquash.
inline int squash_interp(int d) {
    const int w = d & 127, i = (d >> 7) + 16;
    return (kSquash[i] * (128 - w) + kSquash[i + 1] * w + 64) >> 7;
}

struct Tables {
    int16_t squash[4095];   // squash_interp(d) clamped to [1, 4095], at index d + 2047
    int16_t stretch[4096];  // the inverse of squash: the smallest d with squash_interp(d) >= p
    uint16_t rate[kLimit + 1];
    Tables() {
        int p = 0;
        for (int d = -2047; d <= 2047; ++d) {
            const int v = squash_interp(d);
            squash[d + 2047] = int16_t(std::clamp(v, 1, 4095));
            for (; p <= v; ++p) stretch[p] = int16_t(d);
        }
        for (; p < 4096; ++p) stretch[p] = 2047;
        for (int n = 0; n <= kLimit; ++n) rate[n] = uint16_t(131072 / (2 * n + 3));
    }
};

const Tables kTables;  // built once, when the extension loads

// Mean |v| with 6 fraction bits -> bucket 0..15 on a half-octave scale (1.0 -> 4, 2.0 -> 6, ...).
inline int act_bucket(uint32_t a) {
    if (a < 16) return 0;
    const int l = 31 - __builtin_clz(a);
    return std::min(kAct - 1, 2 * l + int((a >> (l - 1)) & 1) - 8);
}

// A neighbour value u as a class 0..18: u clamped to [-9, 9], plus 9.
inline int cls(int u) { return std::clamp(u, -9, 9) + 9; }

// How many values before this one in the row equal the value above them, without a break:
// 0, 1-3, 4-15, 16+ -> 0..3.
// The value above u against the unary threshold k (0 for the zero and sign decisions), u mirrored
// once the value is known to be negative: clamp(u - k, -4, 4) + 4, so an exact copy is learnable
// at every magnitude.
inline int diff(int u, int k) { return std::clamp(u - k, -4, 4) + 4; }

inline int run_bucket(uint32_t run) { return run == 0 ? 0 : run < 4 ? 1 : run < 16 ? 2 : 3; }

// A mixer weight clamped to [-kWeightMax, kWeightMax] (std::clamp's value, one test when inside).
inline int32_t clamp_weight(int32_t v) {
    if (uint32_t(v + kWeightMax) > uint32_t(2 * kWeightMax)) v = v < 0 ? -kWeightMax : kWeightMax;
    return v;
}

struct Counter {
    uint16_t p = 32768;  // probability of a 1, 16 bits
    uint16_t n = 0;
};

class Model {
  public:
    // `version`: the stream version whose model this is (2 or 3; see the column activities).
    explicit Model(int version)
        : version_(version),
          m_{std::vector<Counter>(kAct * kAct * kNodes), std::vector<Counter>(kDiff * kCls * kRun * kNodes),
             std::vector<Counter>(kCls * kAct * kNodes), std::vector<Counter>(kCls * 8 * kNodes),
             std::vector<Counter>(kCtxPriorClasses * kAct * kNodes)} {
        for (auto& set : w_) {
            std::fill(set, set + kModels, kInit);
            set[kModels] = 0;
        }
    }

    // Code one matrix held in coding order (`m`: R x C); Coder::bit(b, p) codes bit b (encoder) or
    // returns the decoded bit (decoder, b ignored); decoding writes the values into m. A column
    // prior enters as a class per coded column (pcol) or per coded row (prow), at most one of them.
    template <class Coder>
    void code_matrix(Coder& io, int8_t* m, uint64_t R, uint64_t C, int bits, const uint8_t* pcol,
                     const uint8_t* prow) {
        Coder local = io;  // a copy the compiler can keep in registers
        if (version_ >= 3)
            code_rows<Coder, 3>(local, m, R, C, bits, pcol, prow);
        else
            code_rows<Coder, 4>(local, m, R, C, bits, pcol, prow);
        io = local;
    }

  private:
    // code_matrix's work, on its copy of the coder, with the first N models of the slots below
    // (version 2: all four; version 3: the first three).
    template <class Coder, int N>
    void code_rows(Coder& io, int8_t* m, uint64_t R, uint64_t C, int bits, const uint8_t* pcol,
                   const uint8_t* prow) {
        const int qpos = (1 << (bits - 1)) - 1, qneg = 1 << (bits - 1);
        col_.assign(C, global_);
        slow_.assign(C, global_);
        mean_.assign(C, 0);
        for (uint64_t i = 0; i < R; ++i) {
            int8_t* row = m + i * C;
            const int8_t* up = i ? row - C : nullptr;
            const int8_t* up2 = i > 1 ? row - 2 * C : nullptr;
            // Column activities: running means at rates 1/2^cs and 1/2^ss; version 3 starts them as
            // near-means of the first values (rate 1/2, 1/4, 1/4, 1/8, ...: 1/2^bitlen(i + 1), capped).
            const int len = 64 - __builtin_clzll(i + 1);
            const int cs = version_ >= 3 ? std::min(len, 3) : 3, ss = version_ >= 3 ? std::min(len, 8) : 5;
            uint32_t run = 0;
            for (uint64_t j = 0; j < C; ++j) {
                const int ca = act_bucket(col_[j]), rb = act_bucket(slow_[j]);
                const int ref = up ? up[j] : 0, ref2 = up2 ? up2[j] : 0, mean = (mean_[j] + 32) >> 6;
                const int rn = run_bucket(run);
                // Context slots of the models for a value of sign s (+1, or -1 once the sign is
                // known to be negative: neighbours are then seen mirrored). A column prior takes
                // model 0's place, in a table of its own.
                const int prior = pcol ? pcol[j] : prow ? prow[i] : -1;
                Counter* const first =
                    prior < 0 ? &m_[0][(ca * kAct + rb) * kNodes] : &m_[kModels][(prior * kAct + ca) * kNodes];
                auto slots = [&](int s, Counter** c) {
                    c[0] = first;
                    c[1] = &m_[1][(cls(s * ref2) * kRun + rn) * kDiff * kNodes];
                    c[2] = &m_[2][(cls(s * mean) * kAct + ca) * kNodes];
                    if constexpr (N == 4) c[3] = &m_[3][(cls(s * ref) * 8 + (ca >> 1)) * kNodes];
                };
                Counter* c[N];
                slots(1, c);
                const int set = ca >> 2;
                const int v = row[j];
                int out = 0;
                const int d0 = diff(ref, 0) * kNodes;
                if (code<Coder, N>(io, c, w_[set], 0, d0, v != 0)) {
                    const bool neg = code<Coder, N>(io, c, w_[4 + set], 1, d0, v < 0);
                    if (neg) slots(-1, c);
                    const int mmax = neg ? qneg : qpos, mag = std::abs(v);
                    int k = 1;
                    while (k < mmax) {
                        const int node = 2 + std::min(k - 1, kNodes - 3);
                        const int d2 = diff(neg ? -ref : ref, k) * kNodes;
                        if (!code<Coder, N>(io, c, w_[node * 4 + set], node, d2, mag > k)) break;
                        ++k;
                    }
                    out = neg ? -k : k;
                }
                row[j] = int8_t(out);
                run = out == ref && up ? run + 1 : 0;
                const uint32_t x = uint32_t(std::abs(out)) << 6;
                col_[j] = (col_[j] * ((1u << cs) - 1) + x) >> cs;
                slow_[j] = (slow_[j] * ((1u << ss) - 1) + x) >> ss;
                mean_[j] += ((out * 64) - mean_[j]) / 16;
                global_ = (global_ * 255 + x) >> 8;
            }
        }
    }

    // One binary decision at `node`: mix the first N models' predictions with weights w (and the
    // bias, w[kModels]), code the bit, update counters and weights. Model 1's slot is further
    // offset by `d2` (its diff() class).
    template <class Coder, int N>
    static int code(Coder& io, Counter* const* c, int32_t* w, int node, int d2, int bit) {
        const Tables& T = kTables;
        int st[N];
        int64_t dot = int64_t(w[kModels]) * 256;
        for (int i = 0; i < N; ++i) {
            st[i] = T.stretch[c[i][node + (i == 1 ? d2 : 0)].p >> 4];
            dot += int64_t(w[i]) * st[i];
        }
        const int p = T.squash[std::clamp<int64_t>(dot >> 16, -2047, 2047) + 2047];
        const int y = io.bit(bit, p);
        const int err = (y << 12) - p;
        for (int i = 0; i < N; ++i) w[i] = clamp_weight(w[i] + ((st[i] * err) >> kLrShift));
        w[kModels] = clamp_weight(w[kModels] + ((256 * err) >> kLrShift));
        const int target = y ? 65535 : 0;
        for (int i = 0; i < N; ++i) {
            Counter& q = c[i][node + (i == 1 ? d2 : 0)];
            q.p = uint16_t(q.p + (((target - int(q.p)) * int(T.rate[q.n])) >> 16));
            q.n += q.n < kLimit;
        }
        return y;
    }

    int version_;
    std::vector<Counter> m_[kModels + 1];  // the models' counters; the last: model 0 with a prior
    int32_t w_[kSets][kInputs];
    std::vector<uint32_t> col_, slow_;
    std::vector<int32_t> mean_;
    uint32_t global_ = 1 << 6;
};

class Encoder {
  public:
    static constexpr bool kDecodes = false;
    explicit Encoder(std::vector<uint8_t>& out) : out_(&out) {}
    int bit(int y, int p) {
        const uint32_t mid = x1_ + uint32_t((uint64_t(x2_ - x1_) * uint32_t(p)) >> 12);
        y ? x2_ = mid : x1_ = mid + 1;
        while (((x1_ ^ x2_) & 0xFF000000u) == 0) {
            out_->push_back(uint8_t(x2_ >> 24));
            x1_ <<= 8;
            x2_ = (x2_ << 8) | 255;
        }
        return y;
    }
    void flush() {
        for (int b = 3; b >= 0; --b) out_->push_back(uint8_t(x1_ >> (8 * b)));
    }

  private:
    std::vector<uint8_t>* out_;
    uint32_t x1_ = 0, x2_ = 0xFFFFFFFFu;
};

// The encoder's trials: adds up what the bits would cost, -log2 of each one's probability, in
// 1/65536 bit units, instead of writing them.
class CostCounter {
  public:
    static constexpr bool kDecodes = false;
    int bit(int y, int p) {
        cost_ += table()[y ? p : 4096 - p];
        return y;
    }
    uint64_t cost() const { return cost_; }

  private:
    static const uint32_t* table() {
        static const std::vector<uint32_t> t = [] {
            std::vector<uint32_t> c(4097, 0);
            for (int p = 1; p <= 4096; ++p) c[p] = uint32_t(std::lround(-std::log2(p / 4096.0) * 65536.0));
            return c;
        }();
        return t.data();
    }
    uint64_t cost_ = 0;
};

class Decoder {
  public:
    static constexpr bool kDecodes = true;
    Decoder(const uint8_t* p, const uint8_t* end) : p_(p), end_(end) {
        for (int b = 0; b < 4; ++b) x_ = (x_ << 8) | next();
    }
    int bit(int, int p) {
        const uint32_t mid = x1_ + uint32_t((uint64_t(x2_ - x1_) * uint32_t(p)) >> 12);
        const int y = x_ <= mid;
        y ? x2_ = mid : x1_ = mid + 1;
        while (((x1_ ^ x2_) & 0xFF000000u) == 0) {
            x1_ <<= 8;
            x2_ = (x2_ << 8) | 255;
            x_ = (x_ << 8) | next();
        }
        return y;
    }
    bool at_end() const { return p_ == end_; }

  private:
    uint32_t next() {
        if (p_ == end_) throw stream_error("context-coded stream truncated: payload ended before the last value");
        return *p_++;
    }
    const uint8_t* p_;
    const uint8_t* end_;
    uint32_t x_ = 0, x1_ = 0, x2_ = 0xFFFFFFFFu;
};

void put_varint(std::vector<uint8_t>& out, uint64_t v) {
    while (v >= 0x80) out.push_back(uint8_t(v | 0x80)), v >>= 7;
    out.push_back(uint8_t(v));
}

inline int id_width(uint64_t n) {
    int w = 0;
    while ((uint64_t(1) << w) < n) ++w;
    return w;
}

// The ids 0..n-1 not yet listed, as a Fenwick tree of 0/1 counts: rank, select and remove in
// O(log n).
class Remaining {
  public:
    explicit Remaining(uint64_t n) : t_(n + 1, 0) {
        for (uint64_t i = 1; i <= n; ++i) {
            t_[i] += 1;
            const uint64_t j = i + (i & (~i + 1));
            if (j <= n) t_[j] += t_[i];
        }
        while ((top_ << 1) <= n) top_ <<= 1;
    }
    uint32_t rank(uint32_t id) const {  // how many remaining ids are below id
        uint32_t r = 0;
        for (uint64_t i = id; i; i &= i - 1) r += t_[i];
        return r;
    }
    uint32_t select(uint32_t r) const {  // the remaining id of rank r
        uint64_t pos = 0;
        for (uint64_t step = top_; step; step >>= 1)
            if (pos + step < t_.size() && t_[pos + step] <= r) pos += step, r -= t_[pos];
        return uint32_t(pos);
    }
    void remove(uint32_t id) {
        for (uint64_t i = uint64_t(id) + 1; i < t_.size(); i += i & (~i + 1)) t_[i] -= 1;
    }

  private:
    std::vector<uint32_t> t_;
    uint64_t top_ = 1;
};

// A rank r in [0, n), n >= 1, with the probabilities of a uniform choice (see ctxcoder.h).
template <class Coder>
uint32_t code_rank(Coder& io, uint32_t r, uint64_t n) {
    uint64_t prefix = 0;
    for (int b = id_width(n) - 1; b >= 0; --b) {
        const uint64_t base = prefix << (b + 1), half = uint64_t(1) << b;
        const uint64_t c0 = std::min(half, n - base), c1 = n > base + half ? std::min(half, n - base - half) : 0;
        int bit = 0;
        if (c1) bit = io.bit((r >> b) & 1, std::clamp(int((c1 << 12) / (c0 + c1)), 1, 4095));
        prefix = (prefix << 1) | uint64_t(bit);
    }
    return uint32_t(prefix);
}

// A permuted matrix's row order (version 3): each entry as its rank among the rows not yet listed.
// Decoding fills perm[0..R).
template <class Coder>
void code_order(Coder& io, uint32_t* perm, uint64_t R) {
    Remaining left(R);
    for (uint64_t i = 0; i < R; ++i) {
        const uint32_t r = code_rank(io, Coder::kDecodes ? 0 : left.rank(perm[i]), R - i);
        if (Coder::kDecodes) perm[i] = left.select(r);
        left.remove(perm[i]);
    }
}

// Sum of |a[i] - b[i]| over n bytes (rows biased to unsigned: compilers vectorise this).
uint32_t l1(const uint8_t* a, const uint8_t* b, uint64_t n) {
    uint32_t s = 0;
    for (uint64_t i = 0; i < n; ++i) s += uint32_t(std::abs(int(a[i]) - int(b[i])));
    return s;
}

// Greedy nearest-neighbour row order from row 0: each next row is the unvisited one closest in L1.
std::vector<uint32_t> nn_order(const int8_t* m, uint64_t R, uint64_t C) {
    std::vector<uint8_t> u(R * C);
    for (uint64_t i = 0; i < R * C; ++i) u[i] = uint8_t(m[i] + 128);
    std::vector<uint32_t> left(R - 1), order(1, 0);
    std::iota(left.begin(), left.end(), 1);
    uint32_t cur = 0;
    while (!left.empty()) {
        size_t best = 0;
        uint32_t best_d = UINT32_MAX;
        for (size_t k = 0; k < left.size(); ++k) {
            const uint32_t d = l1(&u[cur * C], &u[left[k] * C], C);
            if (d < best_d) best_d = d, best = k;
        }
        cur = left[best];
        order.push_back(cur);
        left[best] = left.back();
        left.pop_back();
    }
    return order;
}

// A matrix in coding order for the given transpose / permute flags, its row order (empty unless
// permuted) and its prior in coding order (empty without one): per coded column, or per coded
// row when transposed.
struct Variant {
    int flags = -1;  // -1: not a variant this matrix allows
    uint64_t R = 0, C = 0;
    std::vector<int8_t> coded;
    std::vector<uint32_t> perm;
    std::vector<uint8_t> pcol, prow;
};

Variant make_variant(const CtxMatrix& mat, int flags) {
    Variant v;
    v.flags = flags;
    const bool tr = flags & kTransposed;
    v.R = tr ? mat.cols : mat.rows;
    v.C = tr ? mat.rows : mat.cols;
    std::vector<int8_t> base(mat.codes, mat.codes + mat.rows * mat.cols);
    if (tr)
        for (uint64_t r = 0; r < mat.rows; ++r)
            for (uint64_t c = 0; c < mat.cols; ++c) base[c * mat.rows + r] = mat.codes[r * mat.cols + c];
    if (flags & kPermuted) {
        v.perm = nn_order(base.data(), v.R, v.C);
        v.coded.resize(base.size());
        for (uint64_t i = 0; i < v.R; ++i) std::memcpy(&v.coded[i * v.C], &base[v.perm[i] * v.C], v.C);
    } else {
        v.coded = std::move(base);
    }
    if (mat.prior && !tr) v.pcol.assign(mat.prior, mat.prior + mat.cols);
    if (mat.prior && tr) {
        v.prow.resize(v.R);
        for (uint64_t i = 0; i < v.R; ++i) v.prow[i] = mat.prior[v.perm.empty() ? i : v.perm[i]];
    }
    return v;
}

// Code variant v (its row order if permuted, then its values) with `model`, with or without its
// prior; the model advances past it.
template <class Coder>
void code_variant(Coder& io, Model& model, const Variant& v, bool prior, int bits) {
    if (v.R * v.C == 0) return;
    if (v.flags & kPermuted) {
        std::vector<uint32_t> perm = v.perm;
        code_order(io, perm.data(), v.R);
    }
    std::vector<int8_t> scratch = v.coded;
    model.code_matrix(io, scratch.data(), v.R, v.C, bits, prior && !v.pcol.empty() ? v.pcol.data() : nullptr,
                      prior && !v.prow.empty() ? v.prow.data() : nullptr);
}

// The decoder's bounded input (csrc/stream_reader.h), naming this stream in its errors.
struct Reader : StreamReader {
    Reader(const uint8_t* p, size_t n) : StreamReader(p, n, "context-coded stream") {}
};

void check_prior(const uint8_t* prior, uint64_t cols, size_t k) {
    for (uint64_t c = 0; c < cols; ++c)
        if (prior[c] >= kCtxPriorClasses)
            throw std::invalid_argument("matrix " + std::to_string(k) + ": prior class " + std::to_string(prior[c]) +
                                        " at column " + std::to_string(c) + " is outside 0.." +
                                        std::to_string(kCtxPriorClasses - 1));
}

}  // namespace

std::vector<uint8_t> ctx_encode(const std::vector<CtxMatrix>& mats, int bits, int force_flags) {
    if (bits < 2 || bits > 8) throw std::invalid_argument("bits must be in 2..8, got " + std::to_string(bits));
    if (force_flags > 3) throw std::invalid_argument("force_flags must be -1 or 0..3");
    if (mats.size() > kMaxMatrices) throw std::invalid_argument("at most 65536 matrices per stream");
    const int lo = -(1 << (bits - 1)), hi = (1 << (bits - 1)) - 1;
    uint64_t total = 0;
    for (size_t k = 0; k < mats.size(); ++k) {
        const CtxMatrix& m = mats[k];
        if (m.rows > 0xFFFFFFFFULL || m.cols > 0xFFFFFFFFULL || (m.cols && m.rows > (kMaxValues - total) / m.cols))
            throw std::invalid_argument("matrices too large for one stream (at most 2^32 values)");
        total += m.rows * m.cols;
        for (uint64_t i = 0; i < m.rows * m.cols; ++i)
            if (m.codes[i] < lo || m.codes[i] > hi)
                throw std::invalid_argument("matrix " + std::to_string(k) + ": value " + std::to_string(m.codes[i]) +
                                            " at index " + std::to_string(i) + " is outside the " +
                                            std::to_string(bits) + "-bit range [" + std::to_string(lo) + ", " +
                                            std::to_string(hi) + "]");
        if (m.prior) check_prior(m.prior, m.cols, k);
    }

    // Every allowed variant of every matrix, then the candidate plans (flags per matrix).
    auto allowed = [](const CtxMatrix& m, int flags) {
        if (m.rows * m.cols == 0) return flags == 0;
        const uint64_t R = flags & kTransposed ? m.cols : m.rows;
        if ((flags & kPermuted) && (R < 3 || R > kMaxPermRows)) return false;
        return !((flags & kTransposed) && m.rows < 2);
    };
    const auto empty = [&](size_t k) { return mats[k].rows * mats[k].cols == 0; };
    std::vector<std::array<Variant, 4>> variants(mats.size());
    for (size_t k = 0; k < mats.size(); ++k) {
        if (force_flags >= 0 && !empty(k)) {
            const uint64_t R = force_flags & kTransposed ? mats[k].cols : mats[k].rows;
            if ((force_flags & kPermuted) && R > kMaxPermRows)
                throw std::invalid_argument("matrix " + std::to_string(k) + ": cannot reorder " + std::to_string(R) +
                                            " rows, at most " + std::to_string(kMaxPermRows));
            variants[k][force_flags] = make_variant(mats[k], force_flags);
            continue;
        }
        for (int f = 0; f < 4; ++f)
            if (allowed(mats[k], f)) variants[k][f] = make_variant(mats[k], f);
    }
    const auto with_prior = [&](size_t k, int f) { return mats[k].prior && !empty(k) ? f | kPrior : f; };
    // The stream for a plan (flags per matrix): the headers, then the payload, one model running
    // through all the matrices as the decoder's does.
    const auto write = [&](const std::vector<int>& plan) {
        std::vector<uint8_t> out = {kMagic[0], kMagic[1], kMagic[2], kVersion, uint8_t(bits)};
        put_varint(out, mats.size());
        for (size_t k = 0; k < mats.size(); ++k) {
            put_varint(out, mats[k].rows);
            put_varint(out, mats[k].cols);
            out.push_back(uint8_t(plan[k]));
        }
        if (total == 0) return out;
        Encoder enc(out);
        Model model(kVersion);
        for (size_t k = 0; k < mats.size(); ++k)
            code_variant(enc, model, variants[k][plan[k] & 3], plan[k] & kPrior, bits);
        enc.flush();
        return out;
    };
    std::vector<int> plan(mats.size(), 0);
    if (force_flags >= 0) {
        for (size_t k = 0; k < mats.size(); ++k) plan[k] = empty(k) ? 0 : with_prior(k, force_flags);
        return write(plan);
    }
    // Each matrix's best transpose / permute variant, costed alone (a fresh model, its prior on).
    for (size_t k = 0; k < mats.size(); ++k) {
        uint64_t best = UINT64_MAX;
        for (int f = 0; f < 4; ++f) {
            if (variants[k][f].flags < 0) continue;
            CostCounter counter;
            Model alone(kVersion);
            code_variant(counter, alone, variants[k][f], mats[k].prior, bits);
            if (counter.cost() < best) best = counter.cost(), plan[k] = with_prior(k, f);
        }
    }
    // The smallest stream of: that choice, the same without the priors, every matrix plain, and
    // the variant most matrices chose for every matrix that allows it.
    int votes[4] = {0, 0, 0, 0};
    for (size_t k = 0; k < mats.size(); ++k) votes[plan[k] & 3] += !empty(k);
    const int common = int(std::max_element(votes, votes + 4) - votes);
    std::vector<int> no_priors = plan, plain = plan, uniform = plan;
    for (size_t k = 0; k < mats.size(); ++k) {
        no_priors[k] &= ~kPrior;
        if (!empty(k)) plain[k] = with_prior(k, 0);
        if (!empty(k) && variants[k][common].flags >= 0) uniform[k] = with_prior(k, common);
    }
    std::vector<std::vector<int>> plans = {plan};
    for (const std::vector<int>& other : {no_priors, plain, uniform})
        if (std::find(plans.begin(), plans.end(), other) == plans.end()) plans.push_back(other);
    std::vector<uint8_t> best;
    for (const std::vector<int>& p : plans) {
        std::vector<uint8_t> out = write(p);
        if (best.empty() || out.size() < best.size()) best = std::move(out);
    }
    return best;
}

struct CtxStream::Impl {
    const uint8_t* data;
    size_t size;
    int version = 0, bits = 0;
    std::vector<uint64_t> rows, cols;
    std::vector<int> flags;
    std::vector<std::vector<uint32_t>> perms;  // version 2: the row orders from the header
    uint64_t total = 0;
    size_t payload_at = 0;
};

CtxStream::CtxStream(const uint8_t* data, size_t size) : impl_(new Impl{data, size}) {
    Impl& s = *impl_;
    Reader in(data, size);
    if (std::memcmp(in.take(3, "magic"), kMagic, 3) != 0) throw stream_error("not a pgolf context-coded stream (bad magic)");
    s.version = in.u8("version");
    if (s.version != 2 && s.version != kVersion)
        throw stream_error("unsupported context-coded stream version " + std::to_string(s.version) +
                           " (this build reads 2 and " + std::to_string(kVersion) + ")");
    s.bits = in.u8("bits");
    if (s.bits < 2 || s.bits > 8) throw stream_error("context-coded stream bits " + std::to_string(s.bits) + " not in 2..8");
    const uint32_t K = in.varint("matrix count");
    if (K > kMaxMatrices) throw stream_error("context-coded stream declares " + std::to_string(K) + " matrices, at most 65536");
    const int known = s.version >= 3 ? 7 : 3;
    for (uint32_t k = 0; k < K; ++k) {
        const uint64_t r = in.varint("rows"), c = in.varint("cols");
        const int f = in.u8("matrix flags");
        if (c && r > (kMaxValues - s.total) / c) throw stream_error("context-coded stream holds more than 2^32 values");
        if (f & ~known)
            throw stream_error("context-coded stream matrix " + std::to_string(k) + " has unknown flags " + std::to_string(f));
        if ((f & kPermuted) && r * c == 0) throw stream_error("context-coded stream permutes the rows of an empty matrix");
        if ((f & kPrior) && r * c == 0) throw stream_error("context-coded stream gives an empty matrix a prior");
        if ((f & kPermuted) && (f & kTransposed ? c : r) > kMaxPermRows)
            throw stream_error("context-coded stream permutes " + std::to_string(f & kTransposed ? c : r) +
                               " rows of matrix " + std::to_string(k) + ", at most " + std::to_string(kMaxPermRows));
        s.total += r * c;
        s.rows.push_back(r);
        s.cols.push_back(c);
        s.flags.push_back(f);
    }
    s.perms.resize(K);
    for (uint32_t k = 0; k < K && s.version == 2; ++k) {
        if (!(s.flags[k] & kPermuted)) continue;
        const uint64_t R = s.flags[k] & kTransposed ? s.cols[k] : s.rows[k];
        const int w = id_width(R);
        const size_t bytes = (R * w + 7) / 8;
        const uint8_t* map = in.take(bytes, "row order");
        std::vector<uint32_t>& perm = s.perms[k];
        perm.resize(R);
        std::vector<uint8_t> seen(R, 0);
        for (uint64_t i = 0; i < R; ++i) {
            uint64_t id = 0;
            for (int b = 0; b < w; ++b) id |= uint64_t((map[(i * w + b) / 8] >> ((i * w + b) % 8)) & 1) << b;
            if (id >= R || seen[id])
                throw stream_error("context-coded stream row order of matrix " + std::to_string(k) + " is not a permutation");
            seen[id] = 1;
            perm[i] = uint32_t(id);
        }
        const unsigned used = (R * w) % 8;
        if (used && (map[bytes - 1] >> used)) throw stream_error("context-coded stream row order has nonzero padding bits");
    }
    s.payload_at = in.pos();
    if (s.total == 0 && in.left()) throw stream_error("context-coded stream without values has " + std::to_string(in.left()) + " trailing bytes");
    if (s.total && in.left() < 4) throw stream_error("context-coded stream truncated: no payload");
}

CtxStream::~CtxStream() = default;
int CtxStream::version() const { return impl_->version; }
int CtxStream::bits() const { return impl_->bits; }
size_t CtxStream::count() const { return impl_->rows.size(); }
uint64_t CtxStream::rows(size_t k) const { return impl_->rows.at(k); }
uint64_t CtxStream::cols(size_t k) const { return impl_->cols.at(k); }
int CtxStream::flags(size_t k) const { return impl_->flags.at(k); }
uint64_t CtxStream::total_values() const { return impl_->total; }

void CtxStream::decode(const std::vector<int8_t*>& outs, const std::vector<const uint8_t*>& priors) const {
    const Impl& s = *impl_;
    if (outs.size() != s.rows.size()) throw std::invalid_argument("decode needs one output per matrix");
    for (size_t k = 0; k < s.rows.size(); ++k) {
        if (!(s.flags[k] & kPrior)) continue;
        if (k >= priors.size() || !priors[k])
            throw stream_error("context-coded stream matrix " + std::to_string(k) +
                               " was coded with a column prior and none was given");
        check_prior(priors[k], s.cols[k], k);
    }
    if (s.total == 0) return;
    Decoder dec(s.data + s.payload_at, s.data + s.size);
    Model model(s.version);
    std::vector<int8_t> coded;
    std::vector<uint32_t> perm;
    std::vector<uint8_t> prow;
    for (size_t k = 0; k < s.rows.size(); ++k) {
        const bool tr = s.flags[k] & kTransposed;
        const uint64_t rows = s.rows[k], cols = s.cols[k], R = tr ? cols : rows, C = tr ? rows : cols;
        if (rows * cols == 0) continue;
        perm = s.perms[k];
        if (s.version >= 3 && (s.flags[k] & kPermuted)) {
            perm.assign(R, 0);
            code_order(dec, perm.data(), R);
        }
        const uint8_t* prior = s.flags[k] & kPrior ? priors[k] : nullptr;
        if (prior && tr) {
            prow.resize(R);
            for (uint64_t i = 0; i < R; ++i) prow[i] = prior[perm.empty() ? i : perm[i]];
        }
        coded.assign(R * C, 0);
        model.code_matrix(dec, coded.data(), R, C, s.bits, prior && !tr ? prior : nullptr,
                          prior && tr ? prow.data() : nullptr);
        int8_t* out = outs[k];
        const auto row_of = [&](uint64_t i) { return perm.empty() ? i : uint64_t(perm[i]); };
        if (!tr) {
            for (uint64_t i = 0; i < R; ++i) std::memcpy(out + row_of(i) * cols, &coded[i * C], C);
            continue;
        }
        constexpr uint64_t kTile = 32;  // transpose in tiles that stay in cache
        for (uint64_t i0 = 0; i0 < R; i0 += kTile)
            for (uint64_t c0 = 0; c0 < C; c0 += kTile)
                for (uint64_t c = c0; c < std::min(c0 + kTile, C); ++c)
                    for (uint64_t i = i0; i < std::min(i0 + kTile, R); ++i) out[c * cols + row_of(i)] = coded[i * C + c];
    }
    if (!dec.at_end()) throw stream_error("context-coded stream corrupt: payload bytes left unused");
}

}  // namespace pgolf
