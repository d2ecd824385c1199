// pybind11 entry point of pgolf._codec: bit packing (bitpack.h), rANS coding (rans.h) and the
// context-modelled matrix coder (ctxcoder.h).
// Inputs are read through the buffer protocol without copies; the hot loops run without the GIL.
// pgolf/codec.py is the public API (type checks, torch tensors, CodecError); call it, not this.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <sys/mman.h>

#include <cstdint>
#include <cstring>
#include <string>

#include "bitpack.h"
#include "ctxcoder.h"
#include "errors.h"
#include "rans.h"

namespace py = pybind11;

namespace {

// A C-contiguous buffer of 1-byte items (int8 codes when `int8` is set, any bytes otherwise).
py::buffer_info byte_buffer(const py::buffer& obj, bool int8, const char* name) {
    py::buffer_info info = obj.request();
    if (info.itemsize != 1 || (int8 && info.format != "b"))
        throw py::type_error(std::string(name) + " must be " + (int8 ? "an int8" : "a bytes-like") +
                             " buffer, got format '" + info.format + "'");
    py::ssize_t expect = 1;
    for (py::ssize_t d = info.ndim; d-- > 0;) {
        if (info.shape[d] != 1 && info.strides[d] != expect)
            throw py::value_error(std::string(name) + " must be C-contiguous");
        expect *= info.shape[d];
    }
    return info;
}

// A new bytes object of n bytes to be filled in place. Large ones ask for transparent huge
// pages (as numpy does for its arrays): first-touch page faults otherwise dominate packing.
py::bytes new_bytes(size_t n) {
    PyObject* b = PyBytes_FromStringAndSize(nullptr, py::ssize_t(n));
    if (!b) throw py::error_already_set();
#ifdef MADV_HUGEPAGE
    constexpr uintptr_t huge = uintptr_t(1) << 21;
    if (n >= 4 * huge) {
        const uintptr_t p = reinterpret_cast<uintptr_t>(PyBytes_AS_STRING(b));
        const uintptr_t lo = (p + huge - 1) & ~(huge - 1), hi = (p + n) & ~(huge - 1);
        madvise(reinterpret_cast<void*>(lo), hi - lo, MADV_HUGEPAGE);  // a hint: failure is harmless
    }
#endif
    return py::reinterpret_steal<py::bytes>(b);
}

py::bytes pack_bits(const py::buffer& codes, int bits) {
    const py::buffer_info in = byte_buffer(codes, true, "codes");
    const size_t count = size_t(in.size);
    py::bytes out = new_bytes(pgolf::packed_size(count, bits));
    auto* dst = reinterpret_cast<uint8_t*>(PyBytes_AS_STRING(out.ptr()));
    {
        py::gil_scoped_release nogil;
        pgolf::pack_bits(static_cast<const int8_t*>(in.ptr), count, bits, dst);
    }
    return out;
}

py::array_t<int8_t> unpack_bits(const py::buffer& data, int bits, uint64_t count) {
    const py::buffer_info in = byte_buffer(data, false, "data");
    pgolf::check_packed_length(size_t(in.size), bits, count);  // before allocating the output
    py::array_t<int8_t> out(static_cast<py::ssize_t>(count));
    int8_t* dst = out.mutable_data();
    {
        py::gil_scoped_release nogil;
        pgolf::unpack_bits(static_cast<const uint8_t*>(in.ptr), size_t(in.size), bits, count, dst);
    }
    return out;
}

py::bytes rans_encode(const py::buffer& codes, uint64_t rows, uint64_t cols, bool two_d, int bits,
                      const py::object& row_key, const std::vector<uint64_t>& segments) {
    const py::buffer_info in = byte_buffer(codes, true, "codes");
    if (uint64_t(in.size) != rows * cols)
        throw py::value_error("codes has " + std::to_string(in.size) + " values, shape says " + std::to_string(rows * cols));
    py::buffer_info key;
    if (!row_key.is_none()) {
        key = row_key.cast<py::buffer>().request();
        if (key.format != "f" || uint64_t(key.size) != rows || (key.ndim == 1 && key.strides[0] != 4))
            throw py::value_error("row_key must be a contiguous float32 buffer with one value per row");
    }
    std::vector<uint8_t> stream;
    {
        py::gil_scoped_release nogil;
        stream = pgolf::rans_encode(static_cast<const int8_t*>(in.ptr), rows, cols, two_d, bits,
                                    row_key.is_none() ? nullptr : static_cast<const float*>(key.ptr), segments);
    }
    return py::bytes(reinterpret_cast<const char*>(stream.data()), stream.size());
}

py::array_t<int8_t> rans_decode(const py::buffer& data, uint64_t max_values) {
    const py::buffer_info in = byte_buffer(data, false, "data");
    const pgolf::RansStream stream(static_cast<const uint8_t*>(in.ptr), size_t(in.size));
    if (stream.rows() * stream.cols() > max_values)
        throw pgolf::stream_error("rANS stream holds " + std::to_string(stream.rows() * stream.cols()) +
                                  " values, more than the " + std::to_string(max_values) + " allowed");
    py::array_t<int8_t> out = stream.two_d()
                                  ? py::array_t<int8_t>({py::ssize_t(stream.rows()), py::ssize_t(stream.cols())})
                                  : py::array_t<int8_t>(py::ssize_t(stream.cols()));
    int8_t* dst = out.mutable_data();
    {
        py::gil_scoped_release nogil;
        stream.decode(dst);
    }
    return out;
}

py::dict rans_info(const py::buffer& data) {
    const py::buffer_info in = byte_buffer(data, false, "data");
    const pgolf::RansStream stream(static_cast<const uint8_t*>(in.ptr), size_t(in.size));
    const std::vector<uint16_t> groups = stream.row_groups();
    py::dict info;
    info["shape"] = stream.two_d() ? py::tuple(py::make_tuple(stream.rows(), stream.cols())) : py::tuple(py::make_tuple(stream.cols()));
    info["bits"] = stream.bits();
    info["grouping"] = stream.grouping();
    info["groups"] = stream.groups();
    info["row_groups"] = py::array_t<uint16_t>(py::ssize_t(groups.size()), groups.data());
    return info;
}

// Optional per-matrix column priors: None or a buffer of cols uint8 classes each (priors may be
// empty: none at all).
std::vector<py::buffer_info> prior_buffers(const std::vector<py::object>& priors, const std::vector<uint64_t>& cols) {
    if (!priors.empty() && priors.size() != cols.size())
        throw py::value_error("priors needs one entry (None or an array) per matrix, got " + std::to_string(priors.size()) +
                              " for " + std::to_string(cols.size()));
    std::vector<py::buffer_info> out;
    for (size_t k = 0; k < priors.size(); ++k) {
        if (priors[k].is_none()) {
            out.emplace_back();
            continue;
        }
        out.push_back(byte_buffer(py::buffer(priors[k]), false, "prior"));
        if (uint64_t(out.back().size) != cols[k])
            throw py::value_error("prior " + std::to_string(k) + " has " + std::to_string(out.back().size) +
                                  " classes, its matrix has " + std::to_string(cols[k]) + " columns");
    }
    return out;
}

py::bytes ctx_encode(const std::vector<py::buffer>& mats, const std::vector<std::pair<uint64_t, uint64_t>>& shapes,
                     int bits, int force_flags, const std::vector<py::object>& priors) {
    if (mats.size() != shapes.size()) throw py::value_error("ctx_encode needs one shape per matrix");
    std::vector<py::buffer_info> infos;
    std::vector<pgolf::CtxMatrix> ms;
    std::vector<uint64_t> cols_of;
    for (size_t k = 0; k < mats.size(); ++k) {
        infos.push_back(byte_buffer(mats[k], true, "codes"));
        const auto [rows, cols] = shapes[k];
        if (cols && rows > (uint64_t(1) << 32) / cols)
            throw py::value_error("matrix " + std::to_string(k) + " is too large (at most 2^32 values)");
        if (uint64_t(infos.back().size) != rows * cols)
            throw py::value_error("matrix " + std::to_string(k) + " has " + std::to_string(infos.back().size) +
                                  " values, its shape says " + std::to_string(rows * cols));
        ms.push_back({static_cast<const int8_t*>(infos.back().ptr), rows, cols});
        cols_of.push_back(cols);
    }
    const std::vector<py::buffer_info> pinfos = prior_buffers(priors, cols_of);
    for (size_t k = 0; k < pinfos.size(); ++k) ms[k].prior = static_cast<const uint8_t*>(pinfos[k].ptr);
    std::vector<uint8_t> stream;
    {
        py::gil_scoped_release nogil;
        stream = pgolf::ctx_encode(ms, bits, force_flags);
    }
    return py::bytes(reinterpret_cast<const char*>(stream.data()), stream.size());
}

py::list ctx_decode(const py::buffer& data, uint64_t max_values, const std::vector<py::object>& priors) {
    const py::buffer_info in = byte_buffer(data, false, "data");
    const pgolf::CtxStream stream(static_cast<const uint8_t*>(in.ptr), size_t(in.size));
    if (stream.total_values() > max_values)
        throw pgolf::stream_error("context-coded stream holds " + std::to_string(stream.total_values()) +
                                  " values, more than the " + std::to_string(max_values) + " allowed");
    std::vector<uint64_t> cols_of;
    for (size_t k = 0; k < stream.count(); ++k) cols_of.push_back(stream.cols(k));
    const std::vector<py::buffer_info> pinfos = prior_buffers(priors, cols_of);
    std::vector<const uint8_t*> prior_ptrs;
    for (const py::buffer_info& b : pinfos) prior_ptrs.push_back(static_cast<const uint8_t*>(b.ptr));
    py::list out;
    std::vector<int8_t*> ptrs;
    for (size_t k = 0; k < stream.count(); ++k) {
        py::array_t<int8_t> a({py::ssize_t(stream.rows(k)), py::ssize_t(stream.cols(k))});
        ptrs.push_back(a.mutable_data());
        out.append(a);
    }
    {
        py::gil_scoped_release nogil;
        stream.decode(ptrs, prior_ptrs);
    }
    return out;
}

py::dict ctx_info(const py::buffer& data) {
    const py::buffer_info in = byte_buffer(data, false, "data");
    const pgolf::CtxStream stream(static_cast<const uint8_t*>(in.ptr), size_t(in.size));
    py::list shapes, flags;
    for (size_t k = 0; k < stream.count(); ++k) {
        shapes.append(py::make_tuple(stream.rows(k), stream.cols(k)));
        flags.append(stream.flags(k));
    }
    py::dict info;
    info["version"] = stream.version();
    info["bits"] = stream.bits();
    info["shapes"] = shapes;
    info["flags"] = flags;
    return info;
}

}  // namespace

PYBIND11_MODULE(_codec, m) {
    m.doc() = "pgolf C++ codec: int2..int8 bit packing, rANS and context-modelled coding (use pgolf.codec)";
    m.attr("ABI_VERSION") = 5;
    py::register_exception<pgolf::stream_error>(m, "StreamError", PyExc_ValueError);
    m.def("packed_size", &pgolf::packed_size, py::arg("count"), py::arg("bits"));
    m.def("pack_bits", &pack_bits, py::arg("codes"), py::arg("bits"));
    m.def("unpack_bits", &unpack_bits, py::arg("data"), py::arg("bits"), py::arg("count"));
    m.def("rans_encode", &rans_encode, py::arg("codes"), py::arg("rows"), py::arg("cols"), py::arg("two_d"),
          py::arg("bits"), py::arg("row_key") = py::none(), py::arg("segments") = std::vector<uint64_t>());
    m.def("rans_decode", &rans_decode, py::arg("data"), py::arg("max_values"));
    m.def("rans_info", &rans_info, py::arg("data"));
    m.def("ctx_encode", &ctx_encode, py::arg("mats"), py::arg("shapes"), py::arg("bits"), py::arg("force_flags") = -1,
          py::arg("priors") = std::vector<py::object>());
    m.def("ctx_decode", &ctx_decode, py::arg("data"), py::arg("max_values"), py::arg("priors") = std::vector<py::object>());
    m.def("ctx_info", &ctx_info, py::arg("data"));
}
