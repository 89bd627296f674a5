// Fast text parsers. Two passes over the file in fixed-size chunks: the first counts lines and
// ':' to size the output arrays exactly (no growth, no 2x peak), the second parses. The streaming
// variants make one pass and hand the rows of each chunk to a sink.
#include "fmrecall/parse.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <limits>

namespace fmrecall {

namespace {

constexpr size_t kChunk = size_t(1) << 24;  // 16 MiB read buffer (= kMaxLine: a line fits once)
static_assert(kChunk >= kMaxLine, "the read buffer must hold the longest line");

// A regular file opened for reading. The open does not block (O_NONBLOCK, so a FIFO without a
// writer cannot hang it) and anything but a regular file is refused before the first read.
struct File {
  FILE* f = nullptr;
  explicit File(const std::string& path) {
    const int fd = ::open(path.c_str(), O_RDONLY | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0) {
      if (errno == ENOENT) throw FileMissing(path + ": no such file");
      throw InputError(path + ": cannot open: " + std::strerror(errno));
    }
    struct stat st{};
    if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
      ::close(fd);
      throw InputError(path + ": not a regular file (a FIFO, device or socket cannot be parsed)");
    }
    const int fl = ::fcntl(fd, F_GETFL);
    if (fl >= 0) ::fcntl(fd, F_SETFL, fl & ~O_NONBLOCK);
    f = ::fdopen(fd, "rb");
    if (!f) {
      ::close(fd);
      throw InputError(path + ": cannot open: " + std::strerror(errno));
    }
  }
  ~File() {
    if (f) std::fclose(f);
  }
  File(const File&) = delete;
  File& operator=(const File&) = delete;
};

inline void poll(const Poll& stop) {
  if (stop && stop()) throw Cancelled();
}

// Calls fn(begin, end) for every complete line of the file (end excludes '\n'), then chunk_done()
// after the lines of each read chunk; polls `stop` before every read. A line of kMaxLine bytes or
// more is an InputError naming path:line.
template <class Fn, class Done>
void for_each_line(File& file, const std::string& path, const Poll& stop, Fn&& fn, Done&& chunk_done) {
  std::vector<char> buf(kChunk);
  size_t have = 0;
  int64_t lines = 0;
  for (;;) {
    poll(stop);
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
      if (!last) {
        if (have < buf.size()) continue;  // a short read: read on
        throw InputError(path + ":" + std::to_string(lines + 1) + ": line longer than " +
                         std::to_string(kMaxLine >> 20) + " MiB (not a text data file?)");
      }
      end = static_cast<size_t>(last - b) + 1;
    }
    const char* p = b;
    const char* stop_at = b + end;
    while (p < stop_at) {
      const char* nl = static_cast<const char*>(std::memchr(p, '\n', static_cast<size_t>(stop_at - p)));
      const char* le = nl ? nl : stop_at;
      ++lines;
      fn(p, le);
      p = nl ? nl + 1 : stop_at;
    }
    chunk_done();
    if (eof) break;
    std::memmove(buf.data(), buf.data() + end, have - end);
    have -= end;
  }
}

struct Counts {
  int64_t lines = 0, colons = 0;
};

Counts count(File& file, const std::string& path, const Poll& stop) {
  Counts c;
  std::vector<char> buf(kChunk);
  size_t got;
  char last = '\n';
  for (;;) {
    poll(stop);
    if ((got = std::fread(buf.data(), 1, buf.size(), file.f)) == 0) break;
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

// Rough decimal exponent of a syntactically valid, nonzero decimal number: for 0.00d... it is
// -(zeros after the point), for ddd.d... the number of integer digits, plus the exponent. Used only
// to tell an overflow (> 0) from an underflow (<= 0) once from_chars has said "out of range"
// (float range is about 1e-45 .. 3.4e38, so the two never meet near 0).
int64_t decimal_magnitude(const char* s, const char* e) {
  if (s < e && (*s == '-' || *s == '+')) ++s;
  int64_t mag = 0;
  bool nonzero = false;
  for (; s < e && static_cast<unsigned>(*s - '0') < 10u; ++s) {
    if (*s != '0') nonzero = true;
    if (nonzero) ++mag;
  }
  if (!nonzero && s < e && *s == '.') {
    for (++s; s < e && *s == '0'; ++s) --mag;
  }
  while (s < e && *s != 'e' && *s != 'E') ++s;
  if (s < e) {
    ++s;
    bool neg = false;
    if (s < e && (*s == '-' || *s == '+')) neg = *s++ == '-';
    int64_t x = 0;
    for (; s < e && static_cast<unsigned>(*s - '0') < 10u; ++s)
      x = std::min<int64_t>(x * 10 + (*s - '0'), int64_t(1) << 40);
    mag += neg ? -x : x;
  }
  return mag;
}

class LineParser {
 public:
  LineParser(const std::string& path, Parsed& out) : path_(path), out_(out) {}

  // Errors quote the token with bytes outside printable ASCII written as \xNN, so the message is
  // valid UTF-8 whatever the file holds (Python gets a ValueError, never a UnicodeDecodeError).
  [[noreturn]] void fail(const std::string& what, const char* tok, const char* e) const {
    const char* te = tok;
    while (te < e && !is_space(*te)) ++te;
    std::string t;
    static const char hex[] = "0123456789abcdef";
    for (const char* c = tok; c < te && c - tok < 60; ++c) {
      const unsigned char u = static_cast<unsigned char>(*c);
      if (u >= 0x20 && u < 0x7f && u != '\\') {
        t += static_cast<char>(u);
      } else {
        t += "\\x";
        t += hex[u >> 4];
        t += hex[u & 15];
      }
    }
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

  // A decimal float: optional sign ('+' or '-', one), digits, optional exponent; the whole token.
  // A magnitude too small for float32 (below ~1.4e-45, e.g. 1e-50 or 1e-400) reads as 0; one too
  // large (above ~3.4e38), inf and nan are errors.
  float number(const char*& p, const char* e, const char* tok, const char* what) const {
    const char* te = p;
    while (te < e && !is_space(*te)) ++te;
    const char* s = p;
    if (s < te && *s == '+') {
      ++s;
      if (s < te && (*s == '-' || *s == '+')) fail(std::string("bad ") + what + " (two signs)", tok, e);
    }
    float v = 0.f;
    const auto res = std::from_chars(s, te, v);
    if (s == te || res.ec == std::errc::invalid_argument || res.ptr != te) fail(std::string("bad ") + what, tok, e);
    if (res.ec == std::errc::result_out_of_range) {
      if (decimal_magnitude(s, te) > 0) fail(std::string(what) + " out of float range", tok, e);
      p = te;
      return 0.f;  // underflow
    }
    if (res.ec != std::errc()) fail(std::string("bad ") + what, tok, e);
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
    ++rows_;
    return true;
  }

  int64_t line_no() const { return line_; }
  int64_t rows() const { return rows_; }

 private:
  const std::string& path_;
  Parsed& out_;
  int64_t line_ = 0;
  int64_t rows_ = 0;
};

template <bool FFM>
Parsed parse(const std::string& path, const int32_t* fmap, int64_t nmap, const Poll& stop) {
  File file(path);
  const Counts c = count(file, path, stop);
  Parsed out;
  const int64_t nodes = FFM ? c.colons / 2 : c.colons;
  out.indptr.reserve(static_cast<size_t>(c.lines) + 1);
  out.label.reserve(static_cast<size_t>(c.lines));
  out.field.reserve(static_cast<size_t>(nodes));
  out.feat.reserve(static_cast<size_t>(nodes));
  LineParser lp(path, out);
  for_each_line(
      file, path, stop, [&](const char* b, const char* e) { lp.template line<FFM>(b, e, fmap, nmap); }, [] {});
  if (out.label.empty()) throw InputError(path + ": empty file (no rows)");
  return out;
}

template <bool FFM>
int64_t stream(const std::string& path, const int32_t* fmap, int64_t nmap, const Sink& sink, const Poll& stop) {
  File file(path);
  Parsed block;
  LineParser lp(path, block);
  for_each_line(
      file, path, stop, [&](const char* b, const char* e) { lp.template line<FFM>(b, e, fmap, nmap); },
      [&] {
        if (block.label.empty()) return;
        sink(block);
        block = Parsed{};
      });
  if (lp.rows() == 0) throw InputError(path + ": empty file (no rows)");
  return lp.rows();
}

}  // namespace

Parsed parse_libffm(const std::string& path, const Poll& stop) { return parse<true>(path, nullptr, 0, stop); }

Parsed parse_libsvm(const std::string& path, const int32_t* field_of_feature, int64_t n_map, const Poll& stop) {
  return parse<false>(path, field_of_feature, n_map, stop);
}

int64_t stream_libffm(const std::string& path, const Sink& sink, const Poll& stop) {
  return stream<true>(path, nullptr, 0, sink, stop);
}

int64_t stream_libsvm(const std::string& path, const int32_t* field_of_feature, int64_t n_map, const Sink& sink,
                      const Poll& stop) {
  return stream<false>(path, field_of_feature, n_map, sink, stop);
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
