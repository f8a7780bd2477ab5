// expect.h — the check macro of the native tests that report with printf-style messages:
// EXPECT(cond, fmt, ...) counts a check and, when cond is false, prints file:line, the condition
// and the message (the first 30 failures; all are counted). main() ends with
// `return pktest::finish("name");` (exit status 1 when anything failed).
#pragma once
#include <cstdio>

namespace pktest {
inline int g_fail = 0, g_checks = 0;
inline int finish(const char* name) {
  std::printf("%s: %d checks, %d failures\n", name, g_checks, g_fail);
  return g_fail ? 1 : 0;
}
}  // namespace pktest

#define EXPECT(cond, ...)                                                      \
  do {                                                                         \
    ::pktest::g_checks++;                                                      \
    if (!(cond)) {                                                             \
      if (::pktest::g_fail++ < 30) {                                           \
        std::printf("FAIL %s:%d: %s: ", __FILE__, __LINE__, #cond);            \
        std::printf(__VA_ARGS__);                                              \
        std::printf("\n");                                                     \
      }                                                                        \
    }                                                                          \
  } while (0)
