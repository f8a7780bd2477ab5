// error.h — the one exception type of the core, and the check macro every op uses.
//
// Ops validate shapes, dtypes, devices and indices before touching memory and throw pk::Error;
// the N-API glue turns it into a JS Error whose message names the op and the shapes.
#pragma once
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>
#include <cstdint>

namespace pk {

struct Error : std::runtime_error {
  explicit Error(const std::string& m) : std::runtime_error(m) {}
};

inline std::string shape_str(const std::vector<int64_t>& s) {
  std::string r = "[";
  for (size_t i = 0; i < s.size(); i++) { if (i) r += ","; r += std::to_string(s[i]); }
  return r + "]";
}

namespace detail {
inline void cat_(std::ostringstream&) {}
template <class T, class... R> void cat_(std::ostringstream& o, const T& a, const R&... r) { o << a; cat_(o, r...); }
}  // namespace detail

template <class... A> [[noreturn]] void fail(const A&... a) {
  std::ostringstream o; detail::cat_(o, a...); throw Error(o.str());
}

// PK_CHECK(cond, "op", ": message ", value, ...) — message pieces are streamed together.
#define PK_CHECK(cond, ...) do { if (!(cond)) ::pk::fail(__VA_ARGS__); } while (0)

}  // namespace pk
