// Exception types shared by the codec pieces; module.cpp maps them to Python exceptions.
#pragma once
#include <stdexcept>
#include <string>

namespace pgolf {

// Input bytes that are not a valid stream (truncated, corrupt, inconsistent header).
// Python sees it as pgolf._codec.StreamError, re-raised by pgolf.codec as CodecError.
struct stream_error : std::runtime_error {
    explicit stream_error(const std::string& what) : std::runtime_error(what) {}
};

}  // namespace pgolf
