// Small shared pieces of the core: 64-byte aligned arrays, a seeded RNG, errors.
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <new>
#include <stdexcept>
#include <string>
#include <utility>

#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace fmrecall {

// Input that the user can fix (bad file, bad array): surfaces as Python ValueError.
struct InputError : std::runtime_error {
  using std::runtime_error::runtime_error;
};
// A file that cannot be opened: surfaces as FileNotFoundError.
struct FileMissing : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// Contiguous, zero-initialised, 64-byte aligned array (parameters, AdaGrad state).
template <class T>
class AlignedArray {
 public:
  AlignedArray() = default;
  explicit AlignedArray(size_t n) { resize(n); }
  AlignedArray(AlignedArray&&) noexcept = default;
  AlignedArray& operator=(AlignedArray&&) noexcept = default;

  void resize(size_t n) {
    p_.reset();
    n_ = 0;
    if (n == 0) return;
    // Large tables (model parameters) go on 2 MiB transparent huge pages where the OS offers them:
    // training touches feature blocks at random, and 4 KiB pages would make most of those a TLB miss.
    const bool huge = n * sizeof(T) >= (size_t(4) << 20);
    const size_t align = huge ? (size_t(2) << 20) : 64;
    size_t bytes = (n * sizeof(T) + align - 1) / align * align;
    void* q = std::aligned_alloc(align, bytes);
    if (!q) throw std::bad_alloc();
#ifdef MADV_HUGEPAGE
    if (huge) madvise(q, bytes, MADV_HUGEPAGE);
#endif
    std::memset(q, 0, bytes);
    p_.reset(static_cast<T*>(q));
    n_ = n;
  }
  void fill(T value) {
    for (size_t i = 0; i < n_; ++i) p_[i] = value;
  }
  T* data() noexcept { return p_.get(); }
  const T* data() const noexcept { return p_.get(); }
  size_t size() const noexcept { return n_; }
  bool empty() const noexcept { return n_ == 0; }
  T& operator[](size_t i) noexcept { return p_[i]; }
  const T& operator[](size_t i) const noexcept { return p_[i]; }

 private:
  struct Free {
    void operator()(T* p) const noexcept { std::free(p); }
  };
  std::unique_ptr<T[], Free> p_;
  size_t n_ = 0;
};

// splitmix64: tiny, fast, good enough for shuffles, init and sampling; identical on every platform
// (std:: distributions are not), which makes fixed-seed runs reproducible everywhere.
struct Rng {
  uint64_t s;
  explicit Rng(uint64_t seed) : s(seed) {}
  uint64_t next() noexcept {
    uint64_t z = (s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  }
  // uniform in [0, 1)
  float uniform() noexcept { return static_cast<float>(next() >> 40) * (1.0f / 16777216.0f); }
  double uniform_d() noexcept { return static_cast<double>(next() >> 11) * (1.0 / 9007199254740992.0); }
  // uniform integer in [0, n), Lemire's multiply-shift (bias < n / 2^64)
  uint64_t below(uint64_t n) noexcept {
    return static_cast<uint64_t>((static_cast<unsigned __int128>(next()) * n) >> 64);
  }
};

// A stream seed derived from (seed, a, b): independent streams per epoch / thread / row.
inline uint64_t mix_seed(uint64_t seed, uint64_t a, uint64_t b = 0) {
  Rng r(seed ^ (a * 0xD1B54A32D192ED03ull) ^ (b * 0x8CB92BA72F3D8DD7ull));
  r.next();
  return r.next();
}

}  // namespace fmrecall
