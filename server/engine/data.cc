#include "server/engine/data.h"

#include <algorithm>
#include <cmath>
#include <fstream>
#include <map>
#include <unordered_map>
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

// The class of each distinct classification label text: integer labels stand for themselves;
// otherwise the texts, sorted, are classes 0, 1, ... and `names` gets them in that order.
std::vector<float> ClassesOf(const std::vector<const std::string*>& texts,
                             std::vector<std::string>* names) {
  std::vector<float> classes(texts.size());
  bool numeric = true;
  for (size_t i = 0; i < texts.size() && numeric; ++i) {
    float v;
    numeric = dataio::ParseFloat(*texts[i], &v) && v >= 0 && v == std::floor(v) && v < 1e6;
    classes[i] = v;
  }
  if (numeric) return classes;
  names->clear();
  for (const std::string* t : texts) names->push_back(*t);
  std::sort(names->begin(), names->end());
  for (size_t i = 0; i < texts.size(); ++i) {
    classes[i] = static_cast<float>(std::lower_bound(names->begin(), names->end(), *texts[i]) -
                                    names->begin());
  }
  return classes;
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

CsvStream StreamCsv(std::istream& in, const CsvOptions& options, const CsvRowSink& row,
                    const std::function<bool()>& should_stop) {
  dataio::CsvOptions o;
  o.label_column = options.target;
  o.last_is_label = true;
  const bool classify = options.task == Task::kClassification;
  o.label_rule = classify ? dataio::LabelRule::kPresent : dataio::LabelRule::kFiniteNumber;
  // A target is a float: class texts are counted exactly up to 2^24.
  constexpr size_t kMaxLabelTexts = size_t{1} << 24;
  std::unordered_map<std::string, float> seen;
  std::vector<const std::string*> texts;  // the keys of `seen`, by first appearance
  dataio::CsvTable t;
  int64_t rows = 0;
  const auto each = [&](const float* v, const std::string& label) {
    if (should_stop && rows % 4096 == 0 && should_stop()) {
      throw Cancelled("reading the CSV stopped: the call was cancelled or its deadline passed");
    }
    ++rows;
    float target = 0;
    if (!classify) {
      dataio::ParseFloat(label, &target);  // the reader has checked that it is a finite number
    } else {
      auto [it, added] = seen.try_emplace(label, static_cast<float>(texts.size()));
      if (added && texts.size() == kMaxLabelTexts) {
        throw InvalidArgument("CSV has more than " + std::to_string(kMaxLabelTexts) +
                              " distinct class labels");
      }
      if (added) texts.push_back(&it->first);
      target = it->second;
    }
    row(v, t.feature_names.size(), target);
  };
  Reading([&] {
    dataio::ReadCsvRows(in, o, each, &t);
    return 0;
  });
  if (rows == 0) throw InvalidArgument("CSV has a header but no data rows");
  CsvStream s;
  s.rows = rows;
  s.target_name = t.header[t.label_index];
  s.feature_names = std::move(t.feature_names);
  if (classify) {
    s.class_of = ClassesOf(texts, &s.class_names);
    s.num_classes = static_cast<int>(*std::max_element(s.class_of.begin(), s.class_of.end())) + 1;
  }
  return s;
}

Dataset ReadCsv(std::istream& in, const CsvOptions& options) {
  std::vector<float> x, y;
  const CsvStream s = StreamCsv(in, options, [&](const float* f, size_t width, float target) {
    x.insert(x.end(), f, f + width);
    y.push_back(target);
  });
  const int64_t rows = s.rows, features = static_cast<int64_t>(s.feature_names.size());
  Dataset d;
  d.task = options.task;
  d.target_name = s.target_name;
  d.feature_names = s.feature_names;
  d.class_names = s.class_names;
  d.num_classes = s.num_classes;
  d.input_shape = Shape{{static_cast<int>(features)}};
  d.x = ConstMatrixMap(x.data(), rows, features);
  d.y.resize(rows, 1);
  for (int64_t r = 0; r < rows; ++r) {
    d.y(r, 0) = s.class_of.empty() ? y[r] : s.class_of[static_cast<size_t>(y[r])];
  }
  return d;
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
