// A minimal test harness: TEST(name) { CHECK(...); } and a main() that runs them all.
#pragma once

#include <cmath>
#include <cstdio>
#include <functional>
#include <string>
#include <vector>

namespace check {

struct Case {
  const char* name;
  std::function<void()> body;
};

inline std::vector<Case>& cases() {
  static std::vector<Case> all;
  return all;
}

inline int& failures() {
  static int n = 0;
  return n;
}

struct Register {
  Register(const char* name, std::function<void()> body) { cases().push_back({name, std::move(body)}); }
};

inline void fail(const char* file, int line, const std::string& what) {
  std::fprintf(stderr, "%s:%d: FAILED %s\n", file, line, what.c_str());
  ++failures();
}

}  // namespace check

#define TEST(name)                                         \
  static void name();                                      \
  static const check::Register register_##name(#name, name); \
  static void name()

#define CHECK(cond)                                              \
  do {                                                           \
    if (!(cond)) check::fail(__FILE__, __LINE__, #cond);         \
  } while (0)

#define CHECK_NEAR(a, b, tol)                                                                         \
  do {                                                                                                \
    const double a_ = (a), b_ = (b);                                                                  \
    if (!(std::fabs(a_ - b_) <= (tol)))                                                               \
      check::fail(__FILE__, __LINE__, #a " = " + std::to_string(a_) + " vs " #b " = " + std::to_string(b_)); \
  } while (0)

// CHECK_THROWS(statement, retina::ErrorCode::kX, "substring of the message")
#define CHECK_THROWS(stmt, code_, text)                                                          \
  do {                                                                                           \
    bool thrown_ = false;                                                                        \
    try {                                                                                        \
      stmt;                                                                                      \
    } catch (const retina::Error& e) {                                                           \
      thrown_ = true;                                                                            \
      if (e.code() != (code_)) check::fail(__FILE__, __LINE__, std::string("wrong code: ") + e.what()); \
      if (std::string(e.what()).find(text) == std::string::npos)                                 \
        check::fail(__FILE__, __LINE__, std::string("message lacks '") + (text) + "': " + e.what()); \
    }                                                                                            \
    if (!thrown_) check::fail(__FILE__, __LINE__, "no retina::Error from " #stmt);              \
  } while (0)

#define CHECK_MAIN                                                               \
  int main() {                                                                   \
    for (const check::Case& c : check::cases()) {                                \
      const int before = check::failures();                                      \
      c.body();                                                                  \
      std::printf("%s %s\n", check::failures() == before ? "ok  " : "FAIL", c.name); \
    }                                                                            \
    std::printf("%zu tests, %d failed checks\n", check::cases().size(), check::failures()); \
    return check::failures() ? 1 : 0;                                            \
  }
