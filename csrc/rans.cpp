// rANS coder with per-row-group statistics. Stream layout and coder parameters: see rans.h.
#include "rans.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <functional>
#include <numeric>
#include <stdexcept>
#include <string>

#include "errors.h"
#include "stream_reader.h"

static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "pgolf codec assumes a little-endian host");

namespace pgolf {
namespace {

constexpr uint8_t kMagic[3] = {'P', 'G', 'R'};
constexpr uint8_t kVersion = 1;
constexpr uint32_t kL = 1u << 16;     // lower bound of the coder state
constexpr int kEncPrec = 15;          // probability precision the encoder writes
constexpr int kEncLanes = 4;          // interleaved states the encoder writes
constexpr int kMaxGroups = 256;
constexpr uint64_t kMaxValues = 1ULL << 32;
constexpr uint16_t kMant[16] = {4096, 4277, 4467, 4664, 4871, 5087, 5312, 5547,
                                5793, 6049, 6317, 6597, 6889, 7194, 7512, 7845};

enum Grouping : uint8_t { kOneGroup = 0, kContiguous = 1, kMapped = 2, kSegments = 3 };

inline uint64_t weight(uint8_t t) { return uint64_t(kMant[(t - 1) & 15]) << ((t - 1) >> 4); }

// Bits per group id in a grouping map.
inline int id_width(int groups) {
    int w = 0;
    while ((1 << w) < groups) ++w;
    return w;
}

inline uint64_t contiguous_group(uint64_t r, uint64_t groups, uint64_t rows) { return r * groups / rows; }

// One group's frequency table over symbols [lo, hi].
struct Table {
    int lo = 0, hi = -1;
    uint8_t t[256] = {};
    uint32_t freq[256] = {};
    uint32_t cum[256] = {};
};

// t[lo..hi] -> freq[lo..hi] summing to 2^prec (each present symbol >= 1) and cum. The decoder
// runs the same integer arithmetic, so both sides agree exactly. False when every t is 0.
bool normalise(Table& tb, int prec) {
    const uint64_t M = 1ULL << prec;
    uint64_t W = 0;
    for (int s = tb.lo; s <= tb.hi; ++s)
        if (tb.t[s]) W += weight(tb.t[s]);
    if (W == 0) return false;
    uint64_t rem[256] = {};
    uint64_t S = 0;
    int present[256], n = 0;
    for (int s = tb.lo; s <= tb.hi; ++s) {
        tb.freq[s] = 0;
        if (!tb.t[s]) continue;
        const uint64_t q = weight(tb.t[s]) * M;
        tb.freq[s] = uint32_t(std::max<uint64_t>(1, q / W));
        rem[s] = q % W;
        S += tb.freq[s];
        present[n++] = s;
    }
    if (S < M) {  // each floor lost < 1, so the deficit is < n: the largest remainders get +1
        std::stable_sort(present, present + n, [&](int a, int b) { return rem[a] > rem[b]; });
        for (uint64_t i = 0; i < M - S; ++i) ++tb.freq[present[i]];
    } else {
        for (; S > M; --S) {  // raised to 1 above: the largest frequencies give back the excess
            int best = present[0];
            for (int i = 1; i < n; ++i)
                if (tb.freq[present[i]] > tb.freq[best]) best = present[i];
            --tb.freq[best];
        }
    }
    uint32_t c = 0;
    for (int s = tb.lo; s <= tb.hi; ++s) {
        tb.cum[s] = c;
        c += tb.freq[s];
    }
    return true;
}

// ------------------------------------------------------------------------------- encoder

// Table from symbol counts (S entries); returns its coded size in bits of the counted symbols.
double build_table(const uint64_t* cnt, int S, int prec, Table& tb) {
    tb = Table();
    uint64_t nmax = 0;
    for (int s = 0; s < S; ++s) {
        if (!cnt[s]) continue;
        if (tb.hi < 0) tb.lo = s;
        tb.hi = s;
        nmax = std::max(nmax, cnt[s]);
    }
    if (tb.hi < 0) {  // a group without values (not produced by the encoder): any valid table
        tb.lo = tb.hi = 0;
        tb.t[0] = 255;
    }
    for (int s = tb.lo; s <= tb.hi; ++s) {
        if (!cnt[s]) continue;
        const long t = 255 - std::lround(16.0 * std::log2(double(nmax) / double(cnt[s])));
        tb.t[s] = uint8_t(std::clamp<long>(t, 1, 255));
    }
    normalise(tb, prec);
    double bits = 0;
    for (int s = tb.lo; s <= tb.hi; ++s)
        if (cnt[s]) bits += double(cnt[s]) * (prec - std::log2(double(tb.freq[s])));
    return bits;
}

struct Candidate {
    Grouping mode = kOneGroup;
    int groups = 1;
    std::vector<uint16_t> group;  // group id per row
    double bytes = 0;             // estimated stream size beyond the fixed header
    size_t extra_bytes = 0;       // kSegments: segment count, lengths and ids
    std::vector<uint16_t> seg_group;  // kSegments: group id per segment
};

size_t varint_size(uint64_t v) {
    size_t n = 1;
    while (v >= 0x80) v >>= 7, ++n;
    return n;
}

// Row histograms: hist[r * S + u].
struct RowStats {
    uint64_t rows, cols;
    int S;
    std::vector<uint32_t> hist;
};

std::vector<uint64_t> group_counts(const RowStats& st, const std::vector<uint16_t>& group, int groups) {
    std::vector<uint64_t> gh(size_t(groups) * st.S, 0);
    for (uint64_t r = 0; r < st.rows; ++r) {
        uint64_t* dst = &gh[size_t(group[r]) * st.S];
        const uint32_t* src = &st.hist[r * st.S];
        for (int u = 0; u < st.S; ++u) dst[u] += src[u];
    }
    return gh;
}

void evaluate(const RowStats& st, Candidate& c) {
    const auto gh = group_counts(st, c.group, c.groups);
    double bits = 0, bytes = 1;  // grouping byte
    if (c.mode != kOneGroup) bytes += varint_size(c.groups);
    if (c.mode == kMapped) bytes += double((st.rows * id_width(c.groups) + 7) / 8);
    if (c.mode == kSegments) bytes += double(c.extra_bytes);
    Table tb;
    for (int g = 0; g < c.groups; ++g) {
        bits += build_table(&gh[size_t(g) * st.S], st.S, kEncPrec, tb);
        bytes += 2 + (tb.hi - tb.lo + 1);
    }
    c.bytes = bytes + bits / 8 + 4 * kEncLanes;
}

// Drop empty groups and renumber; returns the number left.
int compact_ids(std::vector<uint16_t>& group, int groups) {
    std::vector<int> remap(groups, -1);
    int next = 0;
    for (auto& g : group) {
        if (remap[g] < 0) remap[g] = next++;
        g = uint16_t(remap[g]);
    }
    return next;
}

// Lloyd iterations: move each row to the group whose (smoothed) statistics code it cheapest.
int refine(const RowStats& st, std::vector<uint16_t>& group, int groups, int iters) {
    const int S = st.S;
    std::vector<float> cost(size_t(groups) * S);
    for (int it = 0; it < iters; ++it) {
        const auto gh = group_counts(st, group, groups);
        for (int g = 0; g < groups; ++g) {
            uint64_t n = 0;
            for (int u = 0; u < S; ++u) n += gh[size_t(g) * S + u];
            const double total = std::log2(double(n) + 0.5 * S);
            for (int u = 0; u < S; ++u)
                cost[size_t(g) * S + u] = float(total - std::log2(double(gh[size_t(g) * S + u]) + 0.5));
        }
        bool moved = false;
        for (uint64_t r = 0; r < st.rows; ++r) {
            const uint32_t* h = &st.hist[r * S];
            int best = group[r];
            float best_cost = 0;
            for (int g = 0; g < groups; ++g) {
                const float* cg = &cost[size_t(g) * S];
                float c = 0;
                for (int u = 0; u < S; ++u) c += float(h[u]) * cg[u];
                if (g == 0 || c < best_cost) best_cost = c, best = g;
            }
            if (best != group[r]) group[r] = uint16_t(best), moved = true;
        }
        groups = compact_ids(group, groups);
        if (!moved) break;
    }
    return groups;
}

// Groupings of rows sorted by `key`: G quantile groups of the sorted order.
Candidate sorted_split(const std::vector<float>& key, uint64_t rows, int groups) {
    std::vector<uint64_t> order(rows);
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(), [&](uint64_t a, uint64_t b) { return key[a] < key[b]; });
    Candidate c;
    c.mode = kMapped;
    c.groups = groups;
    c.group.resize(rows);
    for (uint64_t j = 0; j < rows; ++j) c.group[order[j]] = uint16_t(contiguous_group(j, groups, rows));
    return c;
}

// Groupings that give every segment (a run of rows, e.g. one tensor of a jointly coded set) one
// group: each segment its own group, and segments clustered into G groups (sorted by spread,
// then Lloyd iterations over segment histograms).
void segment_candidates(const RowStats& st, const std::vector<uint64_t>& seg, const std::function<void(Candidate)>& consider) {
    const size_t K = seg.size();
    RowStats ss{K, 0, st.S, std::vector<uint32_t>(K * st.S, 0)};
    std::vector<float> spread(K, 0.f);
    size_t lens = 0;
    for (size_t k = 0, r = 0; k < K; ++k) {
        lens += varint_size(seg[k]);
        for (uint64_t e = r + seg[k]; r < e; ++r)
            for (int u = 0; u < st.S; ++u) ss.hist[k * st.S + u] += st.hist[r * st.S + u];
        double m2 = 0, n = 0;
        for (int u = 0; u < st.S; ++u) {
            m2 += double(ss.hist[k * st.S + u]) * double((u - st.S / 2) * (u - st.S / 2));
            n += ss.hist[k * st.S + u];
        }
        spread[k] = float(n ? m2 / n : 0);
    }
    auto make = [&](std::vector<uint16_t> ids, int groups) {
        Candidate c;
        c.mode = kSegments;
        c.groups = groups;
        c.extra_bytes = varint_size(K) + lens + (K * id_width(groups) + 7) / 8;
        c.group.resize(st.rows);
        for (size_t k = 0, r = 0; k < K; ++k)
            for (uint64_t e = r + seg[k]; r < e; ++r) c.group[r] = ids[k];
        c.seg_group = std::move(ids);
        consider(std::move(c));
    };
    if (K <= size_t(kMaxGroups)) {
        std::vector<uint16_t> ids(K);
        std::iota(ids.begin(), ids.end(), 0);
        make(std::move(ids), int(K));
    }
    for (int G = 2; G <= 32 && size_t(G) < K; G *= 2) {
        Candidate c = sorted_split(spread, K, G);
        const int groups = refine(ss, c.group, G, 8);
        if (groups >= 2) make(std::move(c.group), groups);
    }
}

Candidate choose_grouping(const RowStats& st, const float* row_key, const std::vector<uint64_t>& segments) {
    const uint64_t rows = st.rows;
    Candidate best;
    best.group.assign(rows, 0);
    evaluate(st, best);
    auto consider = [&](Candidate c) {
        evaluate(st, c);
        if (c.bytes < best.bytes) best = std::move(c);
    };
    for (int G = 2; G <= 64 && uint64_t(G) <= rows; G *= 2) {
        Candidate c;
        c.mode = kContiguous;
        c.groups = G;
        c.group.resize(rows);
        for (uint64_t r = 0; r < rows; ++r) c.group[r] = uint16_t(contiguous_group(r, G, rows));
        consider(std::move(c));
    }
    // Keys: the mean square code of each row (its spread), and the caller's key (e.g. scales).
    std::vector<std::vector<float>> keys(1, std::vector<float>(rows));
    const int off = st.S / 2;
    for (uint64_t r = 0; r < rows; ++r) {
        double m2 = 0;
        for (int u = 0; u < st.S; ++u) m2 += double(st.hist[r * st.S + u]) * double((u - off) * (u - off));
        keys[0][r] = float(m2);
    }
    if (row_key) keys.emplace_back(row_key, row_key + rows);
    for (int G = 2; G <= 32 && uint64_t(G) <= rows; G *= 2) {
        for (const auto& key : keys) {
            Candidate c = sorted_split(key, rows, G);
            // Lloyd refinement costs rows * G * S per iteration: bounded to keep encoding fast.
            if (double(rows) * G * st.S * 4 <= 6e7) {
                Candidate r = c;
                r.groups = refine(st, r.group, r.groups, 4);
                if (r.groups == 1) r.mode = kOneGroup;
                consider(std::move(r));
            }
            consider(std::move(c));
        }
    }
    if (segments.size() >= 2) segment_candidates(st, segments, consider);
    return best;
}

void put_varint(std::vector<uint8_t>& out, uint64_t v) {
    while (v >= 0x80) out.push_back(uint8_t(v | 0x80)), v >>= 7;
    out.push_back(uint8_t(v));
}

// --------------------------------------------------------------------------- decoder input

// The decoder's bounded input (csrc/stream_reader.h), naming this stream in its errors.
struct Reader : StreamReader {
    Reader(const uint8_t* p, size_t n) : StreamReader(p, n, "rANS stream") {}
};

}  // namespace

// ------------------------------------------------------------------------------- encode

std::vector<uint8_t> rans_encode(const int8_t* codes, uint64_t rows, uint64_t cols, bool two_d, int bits,
                                 const float* row_key, const std::vector<uint64_t>& segments) {
    if (bits < 2 || bits > 8) throw std::invalid_argument("bits must be in 2..8, got " + std::to_string(bits));
    if (!two_d && rows != 1) throw std::invalid_argument("a 1-D tensor is coded as one row");
    if (rows > 0xFFFFFFFFULL || cols > 0xFFFFFFFFULL || (cols && rows > kMaxValues / cols))
        throw std::invalid_argument("tensor too large for the rANS stream (at most 2^32 values)");
    const int S = 1 << bits, off = S / 2;
    const uint64_t count = rows * cols;
    if (!segments.empty()) {
        uint64_t total = 0;
        for (uint64_t n : segments) {
            if (n == 0 || n > rows - total) throw std::invalid_argument("segments must be positive row counts summing to rows");
            total += n;
        }
        if (total != rows) throw std::invalid_argument("segments must be positive row counts summing to rows");
    }

    std::vector<uint8_t> out = {kMagic[0], kMagic[1], kMagic[2], kVersion, uint8_t(two_d ? 1 : 0), uint8_t(bits),
                                uint8_t(kEncPrec), uint8_t(kEncLanes)};
    put_varint(out, rows);
    put_varint(out, cols);
    if (count == 0) return out;

    RowStats st{rows, cols, S, std::vector<uint32_t>(rows * S, 0)};
    for (uint64_t r = 0; r < rows; ++r) {
        uint32_t* h = &st.hist[r * S];
        const int8_t* row = codes + r * cols;
        for (uint64_t c = 0; c < cols; ++c) {
            const unsigned u = unsigned(row[c] + off);
            if (u >= unsigned(S))
                throw std::invalid_argument("value " + std::to_string(row[c]) + " at index " +
                                            std::to_string(r * cols + c) + " is outside the " +
                                            std::to_string(bits) + "-bit range [" + std::to_string(-off) + ", " +
                                            std::to_string(off - 1) + "]");
            ++h[u];
        }
    }
    const Candidate best = choose_grouping(st, row_key, segments);

    out.push_back(best.mode);
    if (best.mode != kOneGroup) put_varint(out, best.groups);
    if (best.mode == kMapped) {
        const int w = id_width(best.groups);
        std::vector<uint8_t> map((rows * w + 7) / 8, 0);
        for (uint64_t r = 0; r < rows; ++r)
            for (int b = 0; b < w; ++b)
                if ((best.group[r] >> b) & 1) map[(r * w + b) / 8] |= uint8_t(1u << ((r * w + b) % 8));
        out.insert(out.end(), map.begin(), map.end());
    }
    if (best.mode == kSegments) {
        const size_t K = segments.size();
        const int w = id_width(best.groups);
        put_varint(out, K);
        for (uint64_t n : segments) put_varint(out, n);
        std::vector<uint8_t> map((K * w + 7) / 8, 0);
        for (size_t k = 0; k < K; ++k)
            for (int b = 0; b < w; ++b)
                if ((best.seg_group[k] >> b) & 1) map[(k * w + b) / 8] |= uint8_t(1u << ((k * w + b) % 8));
        out.insert(out.end(), map.begin(), map.end());
    }
    const auto gh = group_counts(st, best.group, best.groups);
    std::vector<Table> tables(best.groups);
    for (int g = 0; g < best.groups; ++g) {
        Table& tb = tables[g];
        build_table(&gh[size_t(g) * S], S, kEncPrec, tb);
        out.push_back(uint8_t(tb.lo));
        out.push_back(uint8_t(tb.hi));
        out.insert(out.end(), tb.t + tb.lo, tb.t + tb.hi + 1);
    }

    // Code backwards (the decoder runs forwards); at most one word per value.
    std::vector<uint16_t> words(count);
    size_t pos = count;
    uint32_t x[kEncLanes];
    std::fill(x, x + kEncLanes, kL);
    for (uint64_t r = rows; r-- > 0;) {
        const Table& tb = tables[best.group[r]];
        for (uint64_t c = cols; c-- > 0;) {
            const uint64_t i = r * cols + c;
            uint32_t& xs = x[i & (kEncLanes - 1)];
            const unsigned u = unsigned(codes[i] + off);
            const uint32_t f = tb.freq[u];
            if (uint64_t(xs) >= (uint64_t(f) << (32 - kEncPrec))) {
                words[--pos] = uint16_t(xs & 0xFFFF);
                xs >>= 16;
            }
            xs = ((xs / f) << kEncPrec) + (xs % f) + tb.cum[u];
        }
    }
    for (uint32_t s : x)
        for (int b = 0; b < 4; ++b) out.push_back(uint8_t(s >> (8 * b)));
    const size_t head = out.size();
    out.resize(head + 2 * (count - pos));
    std::memcpy(out.data() + head, words.data() + pos, 2 * (count - pos));
    return out;
}

// ------------------------------------------------------------------------------- decode

struct RansStream::Impl {
    const uint8_t* data;
    size_t size;
    bool two_d;
    uint64_t rows, cols;
    int bits, prec, lanes;
    Grouping mode = kOneGroup;
    int groups = 0;
    std::vector<uint16_t> group;  // kMapped only
    std::vector<Table> tables;
    size_t states_at = 0;  // offset of the initial states
};

RansStream::RansStream(const uint8_t* data, size_t size) : impl_(new Impl{data, size}) {
    Impl& s = *impl_;
    Reader in(data, size);
    const uint8_t* magic = in.take(3, "magic");
    if (std::memcmp(magic, kMagic, 3) != 0) throw stream_error("not a pgolf rANS stream (bad magic)");
    const uint8_t version = in.u8("version");
    if (version != kVersion)
        throw stream_error("unsupported rANS stream version " + std::to_string(version) + " (this build reads " +
                           std::to_string(kVersion) + ")");
    const uint8_t flags = in.u8("flags");
    if (flags & ~1u) throw stream_error("rANS stream has unknown flags " + std::to_string(flags));
    s.two_d = flags & 1;
    s.bits = in.u8("bits");
    if (s.bits < 2 || s.bits > 8) throw stream_error("rANS stream bits " + std::to_string(s.bits) + " not in 2..8");
    s.prec = in.u8("precision");
    if (s.prec < 12 || s.prec > 15)
        throw stream_error("rANS stream precision " + std::to_string(s.prec) + " not in 12..15");
    s.lanes = in.u8("lanes");
    if (s.lanes < 1 || s.lanes > 32 || (s.lanes & (s.lanes - 1)))
        throw stream_error("rANS stream lanes " + std::to_string(s.lanes) + " not a power of two in 1..32");
    s.rows = in.varint("rows");
    s.cols = in.varint("cols");
    if (!s.two_d && s.rows != 1) throw stream_error("1-D rANS stream must have rows = 1, got " + std::to_string(s.rows));
    if (s.cols && s.rows > kMaxValues / s.cols)
        throw stream_error("rANS stream shape " + std::to_string(s.rows) + " x " + std::to_string(s.cols) +
                           " exceeds 2^32 values");
    if (s.rows * s.cols == 0) {
        if (in.left()) throw stream_error("empty rANS stream has " + std::to_string(in.left()) + " trailing bytes");
        return;
    }
    const uint8_t mode = in.u8("grouping");
    if (mode > kSegments) throw stream_error("rANS stream grouping " + std::to_string(mode) + " unknown");
    s.mode = Grouping(mode);
    s.groups = 1;
    if (s.mode != kOneGroup) {
        s.groups = int(std::min<uint32_t>(in.varint("group count"), kMaxGroups + 1));
        if (s.groups < 2 || s.groups > kMaxGroups || uint64_t(s.groups) > s.rows)
            throw stream_error("rANS stream group count " + std::to_string(s.groups) + " not in 2..min(rows, 256)");
    }
    if (s.mode == kMapped) {
        const int w = id_width(s.groups);
        const uint64_t nbytes = (s.rows * w + 7) / 8;
        if (nbytes > in.left()) throw stream_error("rANS stream truncated: group map needs " + std::to_string(nbytes) + " bytes");
        const uint8_t* map = in.take(size_t(nbytes), "group map");
        s.group.resize(s.rows);
        for (uint64_t r = 0; r < s.rows; ++r) {
            unsigned id = 0;
            for (int b = 0; b < w; ++b) id |= unsigned((map[(r * w + b) / 8] >> ((r * w + b) % 8)) & 1) << b;
            if (id >= unsigned(s.groups))
                throw stream_error("rANS stream maps row " + std::to_string(r) + " to group " + std::to_string(id) +
                                   " of " + std::to_string(s.groups));
            s.group[r] = uint16_t(id);
        }
        const unsigned used = (s.rows * w) % 8;
        if (used && (map[nbytes - 1] >> used)) throw stream_error("rANS stream group map has nonzero padding bits");
    }
    if (s.mode == kSegments) {
        const uint64_t K = in.varint("segment count");
        if (K < 1 || K > s.rows) throw stream_error("rANS stream segment count " + std::to_string(K) + " not in 1..rows");
        if (uint64_t(s.groups) > K) throw stream_error("rANS stream has more groups than segments");
        std::vector<uint64_t> len(K);
        uint64_t total = 0;
        for (auto& n : len) {
            n = in.varint("segment length");
            if (n == 0 || n > s.rows - total) throw stream_error("rANS stream segment lengths do not sum to its rows");
            total += n;
        }
        if (total != s.rows) throw stream_error("rANS stream segment lengths do not sum to its rows");
        const int w = id_width(s.groups);
        const uint64_t nbytes = (K * w + 7) / 8;
        const uint8_t* map = in.take(size_t(nbytes), "segment groups");
        s.group.resize(s.rows);
        for (uint64_t k = 0, r = 0; k < K; ++k) {
            unsigned id = 0;
            for (int b = 0; b < w; ++b) id |= unsigned((map[(k * w + b) / 8] >> ((k * w + b) % 8)) & 1) << b;
            if (id >= unsigned(s.groups))
                throw stream_error("rANS stream maps segment " + std::to_string(k) + " to group " + std::to_string(id) +
                                   " of " + std::to_string(s.groups));
            for (uint64_t e = r + len[k]; r < e; ++r) s.group[r] = uint16_t(id);
        }
        const unsigned used = (K * w) % 8;
        if (used && (map[nbytes - 1] >> used)) throw stream_error("rANS stream segment groups have nonzero padding bits");
    }
    s.tables.resize(s.groups);
    for (int g = 0; g < s.groups; ++g) {
        Table& tb = s.tables[g];
        tb.lo = in.u8("table range");
        tb.hi = in.u8("table range");
        if (tb.lo > tb.hi || tb.hi >= (1 << s.bits))
            throw stream_error("rANS stream table " + std::to_string(g) + " has symbol range [" + std::to_string(tb.lo) +
                               ", " + std::to_string(tb.hi) + "] outside [0, " + std::to_string((1 << s.bits) - 1) + "]");
        std::memcpy(tb.t + tb.lo, in.take(tb.hi - tb.lo + 1, "frequency table"), tb.hi - tb.lo + 1);
        if (!normalise(tb, s.prec)) throw stream_error("rANS stream table " + std::to_string(g) + " has no symbols");
    }
    s.states_at = in.pos();
    const uint8_t* st = in.take(4 * size_t(s.lanes), "coder states");
    for (int k = 0; k < s.lanes; ++k) {
        uint32_t x;
        std::memcpy(&x, st + 4 * k, 4);
        if (x < kL) throw stream_error("rANS stream coder state " + std::to_string(k) + " below its lower bound");
    }
    if (in.left() % 2) throw stream_error("rANS stream payload has an odd number of bytes");
}

RansStream::~RansStream() = default;
bool RansStream::two_d() const { return impl_->two_d; }
uint64_t RansStream::rows() const { return impl_->rows; }
uint64_t RansStream::cols() const { return impl_->cols; }
int RansStream::bits() const { return impl_->bits; }
int RansStream::grouping() const { return impl_->mode; }
int RansStream::groups() const { return impl_->groups; }

std::vector<uint16_t> RansStream::row_groups() const {
    const Impl& s = *impl_;
    if (s.mode == kMapped || s.mode == kSegments) return s.group;
    std::vector<uint16_t> out(s.rows * s.cols != 0 ? s.rows : 0, 0);
    if (s.mode == kContiguous)
        for (uint64_t r = 0; r < s.rows; ++r) out[r] = uint16_t(contiguous_group(r, s.groups, s.rows));
    return out;
}

void RansStream::decode(int8_t* out) const {
    const Impl& s = *impl_;
    if (s.rows * s.cols == 0) return;
    const uint32_t M = 1u << s.prec, mask = M - 1;
    const int off = 1 << (s.bits - 1);
    std::vector<uint8_t> lut(size_t(s.groups) * M);
    for (int g = 0; g < s.groups; ++g) {
        const Table& tb = s.tables[g];
        for (int u = tb.lo; u <= tb.hi; ++u)
            std::memset(&lut[size_t(g) * M + tb.cum[u]], u, tb.freq[u]);
    }
    uint32_t x[32];
    std::memcpy(x, s.data + s.states_at, 4 * size_t(s.lanes));
    const uint8_t* p = s.data + s.states_at + 4 * size_t(s.lanes);
    const uint8_t* const end = s.data + s.size;
    const uint64_t lane_mask = uint64_t(s.lanes - 1);
    for (uint64_t r = 0; r < s.rows; ++r) {
        const uint64_t g = !s.group.empty() ? s.group[r] : s.mode == kContiguous ? contiguous_group(r, s.groups, s.rows) : 0;
        const Table& tb = s.tables[g];
        const uint8_t* lg = &lut[g * M];
        int8_t* row = out + r * s.cols;
        for (uint64_t c = 0; c < s.cols; ++c) {
            uint32_t& xs = x[(r * s.cols + c) & lane_mask];
            const uint32_t slot = xs & mask;
            const uint8_t u = lg[slot];
            uint32_t y = tb.freq[u] * (xs >> s.prec) + slot - tb.cum[u];
            if (y < kL) {
                if (end - p < 2) throw stream_error("rANS stream truncated: payload ended before the last value");
                y = (y << 16) | uint32_t(p[0]) | (uint32_t(p[1]) << 8);
                p += 2;
            }
            xs = y;
            row[c] = int8_t(int(u) - off);
        }
    }
    if (p != end) throw stream_error("rANS stream corrupt: " + std::to_string(end - p) + " payload bytes left unused");
    for (int k = 0; k < s.lanes; ++k)
        if (x[k] != kL) throw stream_error("rANS stream corrupt: coder state " + std::to_string(k) + " did not return to its start");
}

}  // namespace pgolf
