// Fast text parsers. Two passes over the file in fixed-size chunks: the first counts lines and
// ':' to size the output arrays exactly (no growth, no 2x peak), the second parses.
#include "fmrecall/parse.h"

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <limits>

namespace fmrecall {

namespace {

constexpr size_t kChunk = size_t(1) << 24;  // 16 MiB

struct File {
  FILE* f = nullptr;
  explicit File(const std::string& path) {
    f = std::fopen(path.c_str(), "rb");
    if (!f) {
      if (errno == ENOENT) throw FileMissing(path + ": no such file");
      throw InputError(path + ": cannot open: " + std::strerror(errno));
    }
  }
  ~File() {
    if (f) std::fclose(f);
  }
  File(const File&) = delete;
  File& operator=(const File&) = delete;
};

// Calls fn(begin, end) for every complete line of the file (end excludes '\n').
template <class Fn>
void for_each_line(File& file, const std::string& path, Fn&& fn) {
  std::vector<char> buf(kChunk);
  size_t have = 0;
  for (;;) {
    const size_t got = std::fread(buf.data() + have, 1, buf.size() - have, file.f);
    if (got == 0 && std::ferror(file.f)) throw InputError(path + ": read error");
    have += got;
    const bool eof = got == 0;
    const char* b = buf.data();
    size_t end = 0;
    if (eof) {
      end = have;
    } else {
      const char* last = nullptr;
      for (size_t i = have; i > 0; --i)
        if (b[i - 1] == '\n') {
          last = b + i - 1;
          break;
        }
      if (!last) {  // a line longer than the buffer: grow and read on
        if (have == buf.size()) buf.resize(buf.size() * 2);
        continue;
      }
      end = static_cast<size_t>(last - b) + 1;
    }
    const char* p = b;
    const char* stop = b + end;
    while (p < stop) {
      const char* nl = static_cast<const char*>(std::memchr(p, '\n', static_cast<size_t>(stop - p)));
      const char* le = nl ? nl : stop;
      fn(p, le);
      p = nl ? nl + 1 : stop;
    }
    if (eof) break;
    std::memmove(buf.data(), buf.data() + end, have - end);
    have -= end;
  }
}

struct Counts {
  int64_t lines = 0, colons = 0;
};

Counts count(File& file, const std::string& path) {
  Counts c;
  std::vector<char> buf(kChunk);
  size_t got;
  char last = '\n';
  while ((got = std::fread(buf.data(), 1, buf.size(), file.f)) > 0) {
    c.lines += std::count(buf.data(), buf.data() + got, '\n');
    c.colons += std::count(buf.data(), buf.data() + got, ':');
    last = buf[got - 1];
  }
  if (std::ferror(file.f)) throw InputError(path + ": read error");
  if (last != '\n') ++c.lines;
  std::rewind(file.f);
  return c;
}

inline bool is_space(char ch) { return ch == ' ' || ch == '\t' || ch == '\r' || ch == '\v' || ch == '\f'; }

class LineParser {
 public:
  LineParser(const std::string& path, Parsed& out) : path_(path), out_(out) {}

  [[noreturn]] void fail(const std::string& what, const char* tok, const char* e) const {
    const char* te = tok;
    while (te < e && !is_space(*te)) ++te;
    std::string t(tok, static_cast<size_t>(std::min<ptrdiff_t>(te - tok, 60)));
    throw InputError(path_ + ":" + std::to_string(line_) + ": " + what + (t.empty() ? "" : " in token '" + t + "'"));
  }

  // unsigned integer < 2^31 followed by `sep`
  int64_t index(const char*& p, const char* e, char sep, const char* tok, const char* what) const {
    if (p < e && *p == '-') fail(std::string("negative ") + what + " index", tok, e);
    const char* s = p;
    int64_t v = 0;
    while (p < e && static_cast<unsigned>(*p - '0') < 10u) {
      v = v * 10 + (*p - '0');
      if (v > std::numeric_limits<int32_t>::max()) fail(std::string(what) + " index too large", tok, e);
      ++p;
    }
    if (p == s) fail(std::string("bad ") + what + " index", tok, e);
    if (sep) {
      if (p >= e || *p != sep) fail(std::string("expected '") + sep + "' after " + what + " index", tok, e);
      ++p;
    }
    return v;
  }

  float number(const char*& p, const char* e, const char* tok, const char* what) const {
    const char* te = p;
    while (te < e && !is_space(*te)) ++te;
    const char* s = p;
    if (s < te && *s == '+') ++s;
    float v = 0.f;
    auto res = std::from_chars(s, te, v);
    if (res.ec == std::errc::result_out_of_range) {  // underflow reads as 0, overflow is an error
      double dv = 0.0;
      auto rd = std::from_chars(s, te, dv);
      if (rd.ec != std::errc() || std::fabs(dv) >= 1.0) fail(std::string(what) + " out of float range", tok, e);
      p = te;
      return 0.f;
    }
    if (res.ec != std::errc() || res.ptr != te || s == te) fail(std::string("bad ") + what, tok, e);
    if (!std::isfinite(v)) fail(std::string("non-finite ") + what, tok, e);
    p = te;
    return v;
  }

  // Parses one line; returns false for a blank line. FFM = true: field:feature:value tokens.
  template <bool FFM>
  bool line(const char* p, const char* e, const int32_t* fmap, int64_t nmap) {
    ++line_;
    while (p < e && is_space(*p)) ++p;
    while (e > p && is_space(e[-1])) --e;
    if (p == e) return false;
    out_.label.push_back(number(p, e, p, "label"));
    for (;;) {
      while (p < e && is_space(*p)) ++p;
      if (p >= e) break;
      const char* tok = p;
      int64_t f, j;
      if (FFM) {
        f = index(p, e, ':', tok, "field");
        j = index(p, e, ':', tok, "feature");
      } else {
        j = index(p, e, ':', tok, "feature");
        f = j < nmap ? fmap[j] : -1;
        if (f < 0) fail("feature " + std::to_string(j) + " belongs to no field", tok, e);
      }
      const float v = number(p, e, tok, "value");
      out_.field.push_back(static_cast<int32_t>(f));
      out_.feat.push_back(static_cast<int32_t>(j));
      if (v != 1.f && !out_.has_values) {  // first value other than 1: materialise the ones so far
        out_.has_values = true;
        out_.val.reserve(out_.feat.capacity());
        out_.val.assign(out_.feat.size() - 1, 1.f);  // (this node is already in feat)
      }
      if (out_.has_values) out_.val.push_back(v);
      if (f > out_.max_field) out_.max_field = f;
      if (j > out_.max_feat) out_.max_feat = j;
    }
    out_.indptr.push_back(static_cast<int64_t>(out_.feat.size()));
    return true;
  }

  int64_t line_no() const { return line_; }

 private:
  const std::string& path_;
  Parsed& out_;
  int64_t line_ = 0;
};

template <bool FFM>
Parsed parse(const std::string& path, const int32_t* fmap, int64_t nmap) {
  File file(path);
  const Counts c = count(file, path);
  Parsed out;
  const int64_t nodes = FFM ? c.colons / 2 : c.colons;
  out.indptr.reserve(static_cast<size_t>(c.lines) + 1);
  out.label.reserve(static_cast<size_t>(c.lines));
  out.field.reserve(static_cast<size_t>(nodes));
  out.feat.reserve(static_cast<size_t>(nodes));
  LineParser lp(path, out);
  for_each_line(file, path, [&](const char* b, const char* e) { lp.template line<FFM>(b, e, fmap, nmap); });
  if (out.label.empty()) throw InputError(path + ": empty file (no rows)");
  return out;
}

}  // namespace

Parsed parse_libffm(const std::string& path) { return parse<true>(path, nullptr, 0); }

Parsed parse_libsvm(const std::string& path, const int32_t* field_of_feature, int64_t n_map) {
  return parse<false>(path, field_of_feature, n_map);
}

void write_libffm(const std::string& path, const Csr& data) {
  FILE* f = std::fopen(path.c_str(), "wb");
  if (!f) throw InputError(path + ": cannot open for writing: " + std::strerror(errno));
  std::vector<char> buf(kChunk + 4096);
  size_t len = 0;
  auto flush = [&]() {
    if (len && std::fwrite(buf.data(), 1, len, f) != len) {
      std::fclose(f);
      throw InputError(path + ": write error");
    }
    len = 0;
  };
  auto put_float = [&](float v) {
    auto r = std::to_chars(buf.data() + len, buf.data() + buf.size(), v);
    len = static_cast<size_t>(r.ptr - buf.data());
  };
  auto put_int = [&](int64_t v) {
    auto r = std::to_chars(buf.data() + len, buf.data() + buf.size(), v);
    len = static_cast<size_t>(r.ptr - buf.data());
  };
  for (int64_t r = 0; r < data.rows; ++r) {
    put_float(data.label ? data.label[r] : 0.f);
    for (int64_t t = data.indptr[r]; t < data.indptr[r + 1]; ++t) {
      if (len + 64 > buf.size()) flush();
      buf[len++] = ' ';
      put_int(data.field[t]);
      buf[len++] = ':';
      put_int(data.feat[t]);
      buf[len++] = ':';
      put_float(data.val ? data.val[t] : 1.f);
    }
    buf[len++] = '\n';
    if (len + 64 > buf.size()) flush();
  }
  flush();
  if (std::fclose(f) != 0) throw InputError(path + ": write error");
}

}  // namespace fmrecall
