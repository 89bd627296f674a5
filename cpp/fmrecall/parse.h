// Text formats: libffm (`label field:feature:value ...`) and libsvm / libfm (`label feature:value ...`
// with a feature -> field map). Errors name the file and the 1-based line.
//
// Only regular files are read (a FIFO, a device such as /dev/zero or a socket is an InputError), a
// line may hold at most kMaxLine bytes, and a long parse can be stopped: `stop` is polled between
// 16 MiB read chunks (in both passes) and, when it returns true, the parse throws Cancelled. The
// core knows nothing of Python: the binding's `stop` checks for signals (Ctrl-C).
#pragma once

#include <cstddef>
#include <cstdint>
#include <exception>
#include <functional>
#include <string>
#include <vector>

#include "train.h"

namespace fmrecall {

constexpr size_t kMaxLine = size_t(1) << 24;  // 16 MiB: a longer line is an error

struct Parsed {
  std::vector<int64_t> indptr{0};
  std::vector<int32_t> field, feat;
  std::vector<float> val, label;  // val stays empty while every value is 1 (one-hot data)
  bool has_values = false;
  int64_t max_field = -1, max_feat = -1;
};

// Thrown when `stop` asked the parse to end; the caller knows why.
struct Cancelled : std::exception {
  const char* what() const noexcept override { return "cancelled"; }
};

using Poll = std::function<bool()>;         // true: stop now (empty: never)
using Sink = std::function<void(Parsed&)>;  // receives one block of rows (indptr starts at 0)

Parsed parse_libffm(const std::string& path, const Poll& stop = {});
// field_of_feature[j] is the field of feature j, or -1 if j belongs to no field.
Parsed parse_libsvm(const std::string& path, const int32_t* field_of_feature, int64_t n_map, const Poll& stop = {});

// One pass, bounded memory: the rows of each 16 MiB read chunk go to `sink` as one block (its own
// indptr from 0, its own has_values / max_field / max_feat; a block's val is empty when all its
// values are 1). Line numbers in errors count from the start of the file. Returns the row count;
// a file without rows is an InputError, as for the in-memory parsers.
int64_t stream_libffm(const std::string& path, const Sink& sink, const Poll& stop = {});
int64_t stream_libsvm(const std::string& path, const int32_t* field_of_feature, int64_t n_map, const Sink& sink,
                      const Poll& stop = {});

// Writes rows as libffm text (shortest round-trip float formatting).
void write_libffm(const std::string& path, const Csr& data);

}  // namespace fmrecall
