#include "server/engine/data.h"

#include <zlib.h>

#include <algorithm>
#include <charconv>
#include <cmath>
#include <fstream>
#include <iterator>
#include <limits>
#include <map>
#include <memory>
#include <new>
#include <set>
#include <sstream>

#include "server/engine/random.h"

namespace dropnet::engine {
namespace {

std::vector<std::string> SplitCsvLine(const std::string& line) {
  std::vector<std::string> out;
  std::string cur;
  bool quoted = false;
  for (size_t i = 0; i < line.size(); ++i) {
    char ch = line[i];
    if (quoted) {
      if (ch == '"' && i + 1 < line.size() && line[i + 1] == '"') cur += '"', ++i;
      else if (ch == '"') quoted = false;
      else cur += ch;
    } else if (ch == '"') {
      quoted = true;
    } else if (ch == ',') {
      out.push_back(cur);
      cur.clear();
    } else if (ch != '\r') {
      cur += ch;
    }
  }
  out.push_back(cur);
  for (auto& f : out) {
    size_t b = f.find_first_not_of(" \t"), e = f.find_last_not_of(" \t");
    f = b == std::string::npos ? "" : f.substr(b, e - b + 1);
  }
  return out;
}

bool ParseFloat(const std::string& s, float* v) {
  if (s.empty()) return false;
  const char* end = s.data() + s.size();
  auto r = std::from_chars(s.data(), end, *v);
  return r.ec == std::errc() && r.ptr == end;
}

std::string Where(int64_t line, size_t col, const std::string& name) {
  std::ostringstream s;
  s << "line " << line << ", column " << col + 1 << " (" << name << ")";
  return s.str();
}

}  // namespace

Dataset ReadCsv(std::istream& in, const CsvOptions& options) {
  std::string line;
  if (!std::getline(in, line)) throw InvalidArgument("CSV is empty: a header row is required");
  std::vector<std::string> header = SplitCsvLine(line);
  if (header.size() < 2) throw InvalidArgument("CSV needs at least one feature and one target column");
  size_t target = header.size() - 1;
  if (!options.target.empty()) {
    auto it = std::find(header.begin(), header.end(), options.target);
    if (it == header.end()) {
      throw InvalidArgument("CSV has no column named '" + options.target + "'");
    }
    target = static_cast<size_t>(it - header.begin());
  }
  const size_t features = header.size() - 1;
  std::vector<float> xs;
  std::vector<std::string> labels;
  int64_t line_no = 1, rows = 0;
  while (std::getline(in, line)) {
    ++line_no;
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    std::vector<std::string> fields = SplitCsvLine(line);
    if (fields.size() != header.size()) {
      std::ostringstream msg;
      msg << "CSV line " << line_no << " has " << fields.size() << " fields, the header has "
          << header.size();
      throw InvalidArgument(msg.str());
    }
    for (size_t c = 0; c < fields.size(); ++c) {
      if (c == target) {
        float v;
        if (fields[c].empty() ||
            (options.task == Task::kRegression && (!ParseFloat(fields[c], &v) || !std::isfinite(v)))) {
          throw InvalidArgument("CSV target '" + fields[c] + "' at " + Where(line_no, c, header[c]) +
                                (fields[c].empty() ? " is missing" : " is not a finite number"));
        }
        labels.push_back(fields[c]);
        continue;
      }
      float v;
      if (!ParseFloat(fields[c], &v) || !std::isfinite(v)) {
        throw InvalidArgument("CSV value '" + fields[c] + "' at " + Where(line_no, c, header[c]) +
                              " is not a finite number");
      }
      xs.push_back(v);
    }
    ++rows;
  }
  if (rows == 0) throw InvalidArgument("CSV has a header but no data rows");
  Dataset d;
  d.task = options.task;
  d.target_name = header[target];
  for (size_t c = 0; c < header.size(); ++c)
    if (c != target) d.feature_names.push_back(header[c]);
  d.input_shape = Shape{{static_cast<int>(features)}};
  d.x = ConstMatrixMap(xs.data(), rows, static_cast<int64_t>(features));
  d.y.resize(rows, 1);
  if (options.task == Task::kRegression) {
    for (int64_t r = 0; r < rows; ++r) {
      float v;
      if (!ParseFloat(labels[r], &v) || !std::isfinite(v)) {
        throw InvalidArgument("CSV target '" + labels[r] + "' in row " + std::to_string(r + 1) +
                              " is not a finite number");
      }
      d.y(r, 0) = v;
    }
    return d;
  }
  // Classification: integer labels, or strings mapped to indices in sorted order.
  bool numeric = true;
  std::vector<int64_t> ids(rows);
  for (int64_t r = 0; r < rows && numeric; ++r) {
    float v;
    numeric = ParseFloat(labels[r], &v) && v >= 0 && v == std::floor(v) && v < 1e6;
    if (numeric) ids[r] = static_cast<int64_t>(v);
  }
  if (!numeric) {
    std::set<std::string> names(labels.begin(), labels.end());
    d.class_names.assign(names.begin(), names.end());
    std::map<std::string, int64_t> index;
    for (size_t i = 0; i < d.class_names.size(); ++i) index[d.class_names[i]] = static_cast<int64_t>(i);
    for (int64_t r = 0; r < rows; ++r) ids[r] = index[labels[r]];
  }
  int64_t max_id = 0;
  for (int64_t r = 0; r < rows; ++r) {
    d.y(r, 0) = static_cast<float>(ids[r]);
    max_id = std::max(max_id, ids[r]);
  }
  d.num_classes = static_cast<int>(max_id + 1);
  return d;
}

Dataset LoadCsv(const std::string& path, const CsvOptions& options) {
  std::ifstream in(path);
  if (!in) throw InvalidArgument("cannot open CSV file '" + path + "'");
  return ReadCsv(in, options);
}

namespace {

constexpr uint32_t kIdxImages = 0x00000803, kIdxLabels = 0x00000801;

uint32_t BigEndian(std::string_view b, size_t at) {
  const auto u = [&](size_t i) { return uint32_t{static_cast<unsigned char>(b[at + i])}; };
  return (u(0) << 24) | (u(1) << 16) | (u(2) << 8) | u(3);
}

bool IsGzip(std::string_view raw) {
  return raw.size() >= 2 && static_cast<unsigned char>(raw[0]) == 0x1f &&
         static_cast<unsigned char>(raw[1]) == 0x8b;
}

}  // namespace

std::string IdxBytes(std::string_view raw, const std::string& name, uint64_t max_bytes) {
  if (!IsGzip(raw)) {
    return std::string(max_bytes < raw.size() ? raw.substr(0, max_bytes + 1) : raw);
  }
  std::string out;
  z_stream zs{};
  if (inflateInit2(&zs, 16 + MAX_WBITS) != Z_OK) throw std::bad_alloc();
  struct End {
    z_stream* zs;
    ~End() { inflateEnd(zs); }
  } end{&zs};
  const auto* in = reinterpret_cast<const Bytef*>(raw.data());
  auto feed = [&](size_t from) {
    zs.next_in = const_cast<Bytef*>(in + from);
    zs.avail_in = static_cast<uInt>(std::min<size_t>(raw.size() - from, 1u << 30));
  };
  feed(0);
  unsigned char buf[1 << 16];
  while (out.size() <= max_bytes) {
    zs.next_out = buf;
    zs.avail_out = sizeof buf;
    const int rc = inflate(&zs, Z_NO_FLUSH);
    out.append(reinterpret_cast<const char*>(buf), sizeof buf - zs.avail_out);
    const size_t consumed = static_cast<size_t>(zs.next_in - in);
    if (rc == Z_STREAM_END) {
      if (consumed == raw.size()) return out;
      // Another member may follow, as gzip and zlib's gzread allow.
      if (!IsGzip(raw.substr(consumed))) {
        throw InvalidArgument("IDX file '" + name + "' has bytes after its gzip stream");
      }
      inflateReset(&zs);
      feed(consumed);
    } else if (rc == Z_OK || rc == Z_BUF_ERROR) {
      const bool starved = zs.avail_in == 0 && zs.avail_out != 0;
      if (rc == Z_OK && !starved) continue;
      if (zs.avail_in == 0 && consumed < raw.size()) {
        feed(consumed);
        continue;
      }
      throw InvalidArgument("IDX file '" + name + "' is corrupt (its gzip stream is cut short)");
    } else {
      throw InvalidArgument("IDX file '" + name + "' is corrupt (gzip: " +
                            (zs.msg ? zs.msg : "error " + std::to_string(rc)) + ")");
    }
  }
  return out;  // past max_bytes: the caller reports the size
}

Dataset ReadIdx(std::string_view images_raw, std::string_view labels_raw,
                const std::string& images_name, const std::string& labels_name) {
  // The header first, then exactly as many bytes as it declares (and one more, to tell a file
  // that is too long): a small gzipped file cannot inflate into gigabytes.
  const std::string head = IdxBytes(images_raw, images_name, 16);
  if (head.size() < 16 || BigEndian(head, 0) != kIdxImages) {
    throw InvalidArgument("'" + images_name + "' is not an IDX image file (magic 0x00000803)");
  }
  const uint64_t n = BigEndian(head, 4), h = BigEndian(head, 8), w = BigEndian(head, 12);
  if (h == 0 || w == 0 || h > 4096 || w > 4096 || n == 0) {
    throw InvalidArgument("IDX image header of '" + images_name + "' has implausible sizes");
  }
  const uint64_t pixel_bytes = n * h * w;
  const std::string images = IdxBytes(images_raw, images_name, 16 + pixel_bytes);
  if (images.size() != 16 + pixel_bytes) {
    throw InvalidArgument(
        "IDX image file '" + images_name + "' has " +
        (images.size() > 16 + pixel_bytes ? "more than " + std::to_string(pixel_bytes)
                                          : std::to_string(images.size() - 16)) +
        " pixel bytes, its header says " + std::to_string(pixel_bytes));
  }
  const std::string labels = IdxBytes(labels_raw, labels_name, 8 + n);
  if (labels.size() < 8 || BigEndian(labels, 0) != kIdxLabels) {
    throw InvalidArgument("'" + labels_name + "' is not an IDX label file (magic 0x00000801)");
  }
  if (BigEndian(labels, 4) != n || labels.size() != 8 + n) {
    throw InvalidArgument("IDX label file '" + labels_name + "' does not hold " +
                          std::to_string(n) + " labels");
  }
  const auto* pixels = reinterpret_cast<const unsigned char*>(images.data()) + 16;
  const auto* label = reinterpret_cast<const unsigned char*>(labels.data()) + 8;
  Dataset d;
  d.task = Task::kClassification;
  d.input_shape = Shape{{1, static_cast<int>(h), static_cast<int>(w)}};
  d.x.resize(static_cast<int64_t>(n), static_cast<int64_t>(h * w));
  d.y.resize(static_cast<int64_t>(n), 1);
  int max_label = 0;
  for (uint64_t i = 0; i < n; ++i) {
    for (uint64_t j = 0; j < h * w; ++j) d.x(i, j) = pixels[i * h * w + j] / 255.0f;
    d.y(i, 0) = label[i];
    max_label = std::max<int>(max_label, label[i]);
  }
  d.num_classes = max_label + 1;
  d.target_name = "label";
  return d;
}

namespace {

std::string ReadFileBytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw InvalidArgument("cannot open IDX file '" + path + "'");
  std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (in.bad()) throw InvalidArgument("cannot read IDX file '" + path + "'");
  return bytes;
}

}  // namespace

Dataset LoadIdx(const std::string& images_path, const std::string& labels_path) {
  return ReadIdx(ReadFileBytes(images_path), ReadFileBytes(labels_path), images_path, labels_path);
}

Dataset Subset(const Dataset& data, const std::vector<int64_t>& rows) {
  Dataset out = data;
  out.x.resize(static_cast<int64_t>(rows.size()), data.x.cols());
  out.y.resize(static_cast<int64_t>(rows.size()), data.y.cols());
  for (size_t i = 0; i < rows.size(); ++i) {
    out.x.row(i) = data.x.row(rows[i]);
    out.y.row(i) = data.y.row(rows[i]);
  }
  return out;
}

std::vector<int64_t> Permutation(int64_t n, uint64_t seed) {
  std::vector<int64_t> p(n);
  for (int64_t i = 0; i < n; ++i) p[i] = i;
  SplitMix64 rng(seed);
  for (int64_t i = n - 1; i > 0; --i) std::swap(p[i], p[rng.Below(static_cast<uint64_t>(i + 1))]);
  return p;
}

void SplitDataset(const Dataset& data, double fraction, uint64_t seed, Dataset* first,
                  Dataset* second) {
  if (!(fraction >= 0 && fraction < 1)) {
    throw InvalidArgument("split fraction must be in [0, 1), got " + std::to_string(fraction));
  }
  auto perm = Permutation(data.rows(), seed);
  const int64_t n2 = std::llround(fraction * static_cast<double>(data.rows()));
  std::vector<int64_t> a(perm.begin() + n2, perm.end()), b(perm.begin(), perm.begin() + n2);
  *first = Subset(data, a);
  *second = Subset(data, b);
}

Standardizer Standardizer::Fit(const Matrix& x) {
  Standardizer s;
  const double n = static_cast<double>(std::max<int64_t>(x.rows(), 1));
  Eigen::RowVectorXd mean = x.cast<double>().colwise().sum() / n;
  Eigen::RowVectorXd var = (x.cast<double>().rowwise() - mean).array().square().colwise().sum() / n;
  s.mean = mean.cast<float>();
  s.scale = var.unaryExpr([](double v) { return v > 1e-12 ? std::sqrt(v) : 1.0; }).cast<float>();
  return s;
}

void Standardizer::Apply(Matrix* x) const {
  if (empty()) return;
  x->array().rowwise() -= mean.array();
  x->array().rowwise() /= scale.array();
}

}  // namespace dropnet::engine
