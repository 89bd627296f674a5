// Text formats: libffm (`label field:feature:value ...`) and libsvm / libfm (`label feature:value ...`
// with a feature -> field map). Errors name the file and the 1-based line.
#pragma once

#include <string>
#include <vector>

#include "train.h"

namespace fmrecall {

struct Parsed {
  std::vector<int64_t> indptr{0};
  std::vector<int32_t> field, feat;
  std::vector<float> val, label;  // val stays empty while every value is 1 (one-hot data)
  bool has_values = false;
  int64_t max_field = -1, max_feat = -1;
};

Parsed parse_libffm(const std::string& path);
// field_of_feature[j] is the field of feature j, or -1 if j belongs to no field.
Parsed parse_libsvm(const std::string& path, const int32_t* field_of_feature, int64_t n_map);
// Writes rows as libffm text (shortest round-trip float formatting).
void write_libffm(const std::string& path, const Csr& data);

}  // namespace fmrecall
