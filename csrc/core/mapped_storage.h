// mapped_storage.h — host memory backed by an mmap of an unlinked temp file ("paged" memory).
//
// Why: optimizer states of large models may not fit in RAM next to the weights and activations.
// Memory mapped from a file (MAP_SHARED) is written back to that file under memory pressure and
// faulted in again on access, so states larger than RAM still work — the OS does the paging.
// On the GPU the same role is played by CUDA managed memory (csrc/cuda, when built).
//
// The file is created in `dir` (default: $PEFTKIT_PAGED_DIR, else $TMPDIR, else /tmp), sized with
// posix_fallocate where the file system supports it (so a full disk is an error now, not a
// SIGBUS later), mapped, and unlinked at once: nothing is left behind even if the process dies.
// The mapping is zero-filled. Point PEFTKIT_PAGED_DIR at a disk-backed directory when /tmp is a
// tmpfs (tmpfs pages can only go to swap).
//
// Mapped bytes are not counted in memoryStats() (they are not heap memory); mapped_stats() counts them.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include "storage.h"
#include "tensor.h"

namespace pk {

// `nbytes` of zero-filled paged memory (at least one page is mapped). Throws pk::Error naming the
// directory and the size when the file cannot be created, sized or mapped.
std::shared_ptr<Storage> allocate_mapped(size_t nbytes, const std::string& dir = "");

// A contiguous zero-filled tensor whose storage is paged memory.
Tensor empty_mapped(const Shape& shape, DType dt, const std::string& dir = "");

// Does this storage live in a mapping made by allocate_mapped?
bool is_mapped(const Storage* s);

struct MappedStats {
  int64_t live_bytes = 0;   // bytes currently mapped
  int64_t peak_bytes = 0;
  int64_t mappings = 0;     // live mappings
};
MappedStats mapped_stats();

// The directory allocate_mapped("") uses.
std::string default_mapped_dir();

}  // namespace pk
