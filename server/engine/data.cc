#include "server/engine/data.h"

#include <algorithm>
#include <cmath>
#include <fstream>
#include <map>
#include <set>
#include <utility>

#include "common/dataio/csv.h"
#include "common/dataio/idx.h"
#include "server/engine/random.h"

namespace dropnet::engine {
namespace {

// Runs a reader, turning its DataError into the engine's InvalidArgument.
template <typename Fn>
auto Reading(Fn fn) {
  try {
    return fn();
  } catch (const dataio::DataError& e) {
    throw InvalidArgument(e.what());
  }
}

Dataset FromCsv(dataio::CsvTable t, Task task) {
  if (t.rows == 0) throw InvalidArgument("CSV has a header but no data rows");
  const int64_t rows = t.rows, features = static_cast<int64_t>(t.feature_names.size());
  Dataset d;
  d.task = task;
  d.target_name = t.header[t.label_index];
  d.feature_names = std::move(t.feature_names);
  d.input_shape = Shape{{static_cast<int>(features)}};
  d.x = ConstMatrixMap(t.values.data(), rows, features);
  d.y.resize(rows, 1);
  const std::vector<std::string>& labels = t.labels;
  if (task == Task::kRegression) {
    // The reader has checked that every target is a finite number.
    for (int64_t r = 0; r < rows; ++r) dataio::ParseFloat(labels[r], &d.y(r, 0));
    return d;
  }
  // Classification: integer labels, or strings mapped to indices in sorted order.
  bool numeric = true;
  std::vector<int64_t> ids(rows);
  for (int64_t r = 0; r < rows && numeric; ++r) {
    float v;
    numeric = dataio::ParseFloat(labels[r], &v) && v >= 0 && v == std::floor(v) && v < 1e6;
    if (numeric) ids[r] = static_cast<int64_t>(v);
  }
  if (!numeric) {
    std::set<std::string> names(labels.begin(), labels.end());
    d.class_names.assign(names.begin(), names.end());
    std::map<std::string, int64_t> index;
    for (size_t i = 0; i < d.class_names.size(); ++i)
      index[d.class_names[i]] = static_cast<int64_t>(i);
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

Dataset FromIdx(const dataio::IdxImages& idx) {
  const int64_t n = idx.count, pixels = int64_t{idx.height} * idx.width;
  Dataset d;
  d.task = Task::kClassification;
  d.input_shape = Shape{{1, static_cast<int>(idx.height), static_cast<int>(idx.width)}};
  d.x.resize(n, pixels);
  dataio::ScalePixels(idx, idx.count, d.x.data());
  d.y.resize(n, 1);
  for (int64_t i = 0; i < n; ++i) d.y(i, 0) = static_cast<float>(idx.Label(i));
  d.num_classes = idx.num_classes;
  d.target_name = "label";
  return d;
}

}  // namespace

Dataset ReadCsv(std::istream& in, const CsvOptions& options) {
  dataio::CsvOptions o;
  o.label_column = options.target;
  o.last_is_label = true;
  o.label_rule = options.task == Task::kRegression ? dataio::LabelRule::kFiniteNumber
                                                   : dataio::LabelRule::kPresent;
  return FromCsv(Reading([&] { return dataio::ReadCsv(in, o); }), options.task);
}

Dataset LoadCsv(const std::string& path, const CsvOptions& options) {
  std::ifstream in(path);
  if (!in) throw InvalidArgument("cannot open CSV file '" + path + "'");
  return ReadCsv(in, options);
}

Dataset ReadIdx(std::string_view images, std::string_view labels, const std::string& images_name,
                const std::string& labels_name) {
  return FromIdx(
      Reading([&] { return dataio::ReadIdx(images, labels, images_name, labels_name); }));
}

Dataset LoadIdx(const std::string& images_path, const std::string& labels_path) {
  return FromIdx(Reading([&] { return dataio::LoadIdx(images_path, labels_path); }));
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
