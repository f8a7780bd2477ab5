// bind_io.cpp — file <-> tensor byte transfers for checkpoint readers/writers (lib/io/safetensors.ts).
#include "core/file_io.h"
#include "registry.h"

namespace pka {
namespace {

uint64_t offset_arg(const Napi::CallbackInfo& info, size_t i, const char* name) {
  int64_t o = int_arg(info, i, name);
  PK_CHECK(o >= 0, "argument '", name, "' must be a non-negative byte offset, got ", o);
  return (uint64_t)o;
}

// readFileInto(path, offset, dst): fill contiguous `dst` with the file's bytes at `offset`.
Napi::Value read_file_into(const Napi::CallbackInfo& info) {
  std::string path = str_arg(info, 0, "path");
  uint64_t off = offset_arg(info, 1, "offset");
  pk::read_file_into(path, off, tensor_arg(info, 2, "dst"));
  return info.Env().Undefined();
}

// writeFileFrom(path, offset, src): write `src`'s bytes into an existing file at `offset`.
Napi::Value write_file_from(const Napi::CallbackInfo& info) {
  std::string path = str_arg(info, 0, "path");
  uint64_t off = offset_arg(info, 1, "offset");
  pk::write_file_from(path, off, tensor_arg(info, 2, "src"));
  return info.Env().Undefined();
}

// fileSize(path): bytes in the file.
Napi::Value file_size(const Napi::CallbackInfo& info) {
  return Napi::Number::New(info.Env(), (double)pk::file_size(str_arg(info, 0, "path")));
}

PK_BIND("readFileInto", read_file_into);
PK_BIND("writeFileFrom", write_file_from);
PK_BIND("fileSize", file_size);

}  // namespace
}  // namespace pka
