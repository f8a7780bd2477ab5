// file_io.cpp — pread/pwrite loops (EINTR- and short-read-safe) between files and tensors.
#include "file_io.h"

#include <cerrno>
#include <cstring>
#include <fcntl.h>
#include <sys/stat.h>
#include <sys/types.h>
#ifdef _WIN32
#include <io.h>
#else
#include <unistd.h>
#endif

namespace pk {
namespace {

struct Fd {
  int fd = -1;
  ~Fd() {
#ifdef _WIN32
    if (fd >= 0) _close(fd);
#else
    if (fd >= 0) ::close(fd);
#endif
  }
};

int open_file(const std::string& path, bool write) {
#ifdef _WIN32
  int fd = _open(path.c_str(), (write ? _O_WRONLY : _O_RDONLY) | _O_BINARY);
#else
  int fd = ::open(path.c_str(), (write ? O_WRONLY : O_RDONLY) | O_CLOEXEC);
#endif
  PK_CHECK(fd >= 0, "cannot open '", path, "' for ", write ? "writing" : "reading", ": ", std::strerror(errno));
  return fd;
}

uint64_t fd_size(int fd, const std::string& path) {
#ifdef _WIN32
  struct _stat64 st;
  PK_CHECK(_fstat64(fd, &st) == 0, "cannot stat '", path, "': ", std::strerror(errno));
#else
  struct stat st;
  PK_CHECK(::fstat(fd, &st) == 0, "cannot stat '", path, "': ", std::strerror(errno));
#endif
  return (uint64_t)st.st_size;
}

// One positioned read/write of at most `n` bytes; returns bytes moved, 0 at EOF, -1 on error.
int64_t pio(int fd, void* buf, size_t n, uint64_t off, bool write) {
#ifdef _WIN32
  if (_lseeki64(fd, (__int64)off, SEEK_SET) < 0) return -1;
  unsigned chunk = (unsigned)(n > (1u << 30) ? (1u << 30) : n);
  return write ? _write(fd, buf, chunk) : _read(fd, buf, chunk);
#else
  size_t chunk = n > ((size_t)1 << 30) ? ((size_t)1 << 30) : n;   // stay below SSIZE_MAX / 2GB limits
  return write ? (int64_t)::pwrite(fd, buf, chunk, (off_t)off) : (int64_t)::pread(fd, buf, chunk, (off_t)off);
#endif
}

}  // namespace

uint64_t file_size(const std::string& path) {
  Fd f; f.fd = open_file(path, false);
  return fd_size(f.fd, path);
}

void read_file_into(const std::string& path, uint64_t offset, const Tensor& dst) {
  check_defined(dst, "readFileInto", "dst");
  check_cpu(dst, "readFileInto", "dst");
  PK_CHECK(dst.is_contiguous(), "readFileInto: destination ", dst.desc(), " must be contiguous");
  const uint64_t n = dst.nbytes();
  Fd f; f.fd = open_file(path, false);
  const uint64_t size = fd_size(f.fd, path);
  PK_CHECK(offset <= size && n <= size - offset, "readFileInto: '", path, "' is truncated: bytes [", offset, ", ", offset + n,
           ") requested but the file has ", size, " bytes");
  char* p = static_cast<char*>(dst.raw());
  uint64_t done = 0;
  while (done < n) {
    int64_t r = pio(f.fd, p + done, (size_t)(n - done), offset + done, false);
    if (r < 0 && errno == EINTR) continue;
    PK_CHECK(r >= 0, "readFileInto: reading '", path, "' at byte ", offset + done, " failed: ", std::strerror(errno));
    PK_CHECK(r > 0, "readFileInto: '", path, "' ended at byte ", offset + done, " while reading ", n, " bytes at ", offset);
    done += (uint64_t)r;
  }
}

void write_file_from(const std::string& path, uint64_t offset, const Tensor& src) {
  check_defined(src, "writeFileFrom", "src");
  check_cpu(src, "writeFileFrom", "src");
  Tensor c = src.contiguous();
  const uint64_t n = c.nbytes();
  Fd f; f.fd = open_file(path, true);
  const char* p = static_cast<const char*>(c.raw());
  uint64_t done = 0;
  while (done < n) {
    int64_t r = pio(f.fd, const_cast<char*>(p + done), (size_t)(n - done), offset + done, true);
    if (r < 0 && errno == EINTR) continue;
    PK_CHECK(r > 0, "writeFileFrom: writing '", path, "' at byte ", offset + done, " failed: ", std::strerror(errno));
    done += (uint64_t)r;
  }
}

}  // namespace pk
