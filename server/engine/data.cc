#include "server/engine/data.h"

#include <zlib.h>

#include <algorithm>
#include <charconv>
#include <cmath>
#include <fstream>
#include <map>
#include <memory>
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

struct GzCloser {
  void operator()(gzFile_s* f) const { gzclose(f); }
};

std::vector<unsigned char> ReadAllGz(const std::string& path) {
  std::unique_ptr<gzFile_s, GzCloser> f(gzopen(path.c_str(), "rb"));
  if (!f) throw InvalidArgument("cannot open IDX file '" + path + "'");
  std::vector<unsigned char> out;
  unsigned char buf[1 << 16];
  int n;
  while ((n = gzread(f.get(), buf, sizeof buf)) > 0) out.insert(out.end(), buf, buf + n);
  if (n < 0) throw InvalidArgument("IDX file '" + path + "' is corrupt");
  return out;
}

uint32_t BigEndian(const std::vector<unsigned char>& b, size_t at) {
  return (uint32_t{b[at]} << 24) | (uint32_t{b[at + 1]} << 16) | (uint32_t{b[at + 2]} << 8) |
         uint32_t{b[at + 3]};
}

}  // namespace

Dataset LoadIdx(const std::string& images_path, const std::string& labels_path) {
  auto images = ReadAllGz(images_path);
  auto labels = ReadAllGz(labels_path);
  if (images.size() < 16 || BigEndian(images, 0) != 0x00000803) {
    throw InvalidArgument("'" + images_path + "' is not an IDX image file (magic 0x00000803)");
  }
  if (labels.size() < 8 || BigEndian(labels, 0) != 0x00000801) {
    throw InvalidArgument("'" + labels_path + "' is not an IDX label file (magic 0x00000801)");
  }
  const uint64_t n = BigEndian(images, 4), h = BigEndian(images, 8), w = BigEndian(images, 12);
  if (h == 0 || w == 0 || h > 4096 || w > 4096 || n == 0) {
    throw InvalidArgument("IDX image header of '" + images_path + "' has implausible sizes");
  }
  if (images.size() != 16 + n * h * w) {
    throw InvalidArgument("IDX image file '" + images_path + "' has " +
                          std::to_string(images.size() - 16) + " pixel bytes, its header says " +
                          std::to_string(n * h * w));
  }
  if (BigEndian(labels, 4) != n || labels.size() != 8 + n) {
    throw InvalidArgument("IDX label file '" + labels_path + "' does not hold " +
                          std::to_string(n) + " labels");
  }
  Dataset d;
  d.task = Task::kClassification;
  d.input_shape = Shape{{1, static_cast<int>(h), static_cast<int>(w)}};
  d.x.resize(static_cast<int64_t>(n), static_cast<int64_t>(h * w));
  d.y.resize(static_cast<int64_t>(n), 1);
  int max_label = 0;
  for (uint64_t i = 0; i < n; ++i) {
    for (uint64_t j = 0; j < h * w; ++j) d.x(i, j) = images[16 + i * h * w + j] / 255.0f;
    d.y(i, 0) = labels[8 + i];
    max_label = std::max<int>(max_label, labels[8 + i]);
  }
  d.num_classes = max_label + 1;
  d.target_name = "label";
  return d;
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
