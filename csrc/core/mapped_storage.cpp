// mapped_storage.cpp — see mapped_storage.h. POSIX: mkstemp + posix_fallocate/ftruncate + mmap
// (MAP_SHARED) + unlink. Windows: a delete-on-close temporary file + CreateFileMapping.
#include "mapped_storage.h"

#include <atomic>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <unordered_set>
#include <vector>

#ifdef _WIN32
#define WIN32_LEAN_AND_MEAN
#include <windows.h>
#else
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#endif

#include "error.h"

namespace pk {
namespace {

std::mutex g_mu;
std::unordered_set<const void*>& live_set() {
  static auto* s = new std::unordered_set<const void*>();  // leaked: storages may outlive statics
  return *s;
}
std::atomic<int64_t> g_live{0}, g_peak{0}, g_count{0};

void note_map(const void* p, int64_t n) {
  {
    std::lock_guard<std::mutex> lk(g_mu);
    live_set().insert(p);
  }
  int64_t now = g_live.fetch_add(n) + n;
  g_count.fetch_add(1);
  int64_t peak = g_peak.load();
  while (now > peak && !g_peak.compare_exchange_weak(peak, now)) {}
}

void note_unmap(const void* p, int64_t n) {
  {
    std::lock_guard<std::mutex> lk(g_mu);
    live_set().erase(p);
  }
  g_live.fetch_sub(n);
  g_count.fetch_sub(1);
}

size_t page_size() {
#ifdef _WIN32
  SYSTEM_INFO si; GetSystemInfo(&si);
  return (size_t)si.dwAllocationGranularity;
#else
  long p = sysconf(_SC_PAGESIZE);
  return p > 0 ? (size_t)p : 4096;
#endif
}

}  // namespace

std::string default_mapped_dir() {
  if (const char* d = std::getenv("PEFTKIT_PAGED_DIR")) if (*d) return d;
#ifdef _WIN32
  char buf[MAX_PATH + 1];
  DWORD n = GetTempPathA(MAX_PATH + 1, buf);
  if (n > 0 && n <= MAX_PATH) return std::string(buf, n);
  return ".";
#else
  if (const char* d = std::getenv("TMPDIR")) if (*d) return d;
  return "/tmp";
#endif
}

std::shared_ptr<Storage> allocate_mapped(size_t nbytes, const std::string& dir_in) {
  const std::string dir = dir_in.empty() ? default_mapped_dir() : dir_in;
  const size_t ps = page_size();
  size_t len = nbytes == 0 ? ps : (nbytes + ps - 1) / ps * ps;
#ifdef _WIN32
  char path[MAX_PATH + 1];
  PK_CHECK(GetTempFileNameA(dir.c_str(), "pkp", 0, path) != 0, "emptyPaged: cannot create a temp file in '", dir, "' (error ",
           (unsigned long)GetLastError(), ")");
  HANDLE f = CreateFileA(path, GENERIC_READ | GENERIC_WRITE, 0, nullptr, CREATE_ALWAYS,
                         FILE_ATTRIBUTE_TEMPORARY | FILE_FLAG_DELETE_ON_CLOSE, nullptr);
  PK_CHECK(f != INVALID_HANDLE_VALUE, "emptyPaged: cannot open temp file '", path, "' (error ", (unsigned long)GetLastError(), ")");
  HANDLE m = CreateFileMappingA(f, nullptr, PAGE_READWRITE, (DWORD)((uint64_t)len >> 32), (DWORD)(len & 0xffffffffu), nullptr);
  if (!m) {
    unsigned long e = GetLastError();
    CloseHandle(f);
    fail("emptyPaged: cannot size/map ", len, " bytes in '", dir, "' (error ", e, ")");
  }
  void* p = MapViewOfFile(m, FILE_MAP_ALL_ACCESS, 0, 0, len);
  if (!p) {
    unsigned long e = GetLastError();
    CloseHandle(m); CloseHandle(f);
    fail("emptyPaged: cannot map ", len, " bytes in '", dir, "' (error ", e, ")");
  }
  note_map(p, (int64_t)len);
  return Storage::wrap(p, nbytes, Device::CPU, [p, m, f, len] {
    UnmapViewOfFile(p); CloseHandle(m); CloseHandle(f);
    note_unmap(p, (int64_t)len);
  });
#else
  std::string tmpl = dir;
  if (tmpl.empty() || tmpl.back() != '/') tmpl += '/';
  tmpl += "peftkit-paged-XXXXXX";
  std::vector<char> buf(tmpl.begin(), tmpl.end());
  buf.push_back('\0');
  int fd = ::mkstemp(buf.data());
  PK_CHECK(fd >= 0, "emptyPaged: cannot create a temp file in '", dir, "': ", std::strerror(errno),
           " (set PEFTKIT_PAGED_DIR to a writable directory)");
  const std::string path(buf.data());
  ::fcntl(fd, F_SETFD, FD_CLOEXEC);
  auto bail = [&](const char* what, int err) {
    ::close(fd);
    ::unlink(path.c_str());
    fail("emptyPaged: cannot ", what, " ", len, " bytes in '", dir, "': ", std::strerror(err));
  };
  // Reserve the blocks now where possible: a full disk then fails here instead of SIGBUS on a page fault.
#if defined(__linux__)
  // fallocate(2), not posix_fallocate: glibc emulates the latter by writing every block.
  int rc = ::fallocate(fd, 0, 0, (off_t)len) == 0 ? 0 : errno;
#elif defined(__APPLE__)
  int rc = EOPNOTSUPP;   // no posix_fallocate on macOS: a sparse file
#else
  int rc = ::posix_fallocate(fd, 0, (off_t)len);
#endif
  if (rc != 0) {
    if (rc == ENOSPC || rc == EFBIG) bail("reserve", rc);
    if (::ftruncate(fd, (off_t)len) != 0) bail("size", errno);  // file system without fallocate
  }
  void* p = ::mmap(nullptr, len, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  if (p == MAP_FAILED) bail("map", errno);
  ::close(fd);               // the mapping keeps the file alive
  ::unlink(path.c_str());    // ...and nothing is left on disk once it goes
  note_map(p, (int64_t)len);
  return Storage::wrap(p, nbytes, Device::CPU, [p, len] {
    ::munmap(p, len);
    note_unmap(p, (int64_t)len);
  });
#endif
}

Tensor empty_mapped(const Shape& shape, DType dt, const std::string& dir) {
  for (auto d : shape) PK_CHECK(d >= 0, "emptyPaged: negative dimension in ", shape_str(shape));
  size_t nbytes = (size_t)shape_numel(shape) * dtype_size(dt);
  return Tensor(allocate_mapped(nbytes, dir), shape, contiguous_strides(shape), 0, dt);
}

bool is_mapped(const Storage* s) {
  if (!s) return false;
  std::lock_guard<std::mutex> lk(g_mu);
  return live_set().count(s->data()) > 0;
}

MappedStats mapped_stats() {
  MappedStats st;
  st.live_bytes = g_live.load();
  st.peak_bytes = g_peak.load();
  st.mappings = g_count.load();
  return st;
}

}  // namespace pk
