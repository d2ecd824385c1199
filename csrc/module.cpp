// pybind11 entry point of pgolf._codec. The codec pieces register themselves here.
#include <pybind11/pybind11.h>

PYBIND11_MODULE(_codec, m) {
    m.doc() = "pgolf C++ codec: int2..int8 bit packing and rANS entropy coding";
    m.attr("ABI_VERSION") = 1;
}
