// Data sets: CSV and IDX files as data sets, splits and standardisation.
//
// The files are parsed by common/dataio (its quoting rule and number syntax); this adds what a
// data set means. CSV: one header row, one target column (named, or the last), numbers elsewhere.
// Classification targets are integer labels 0..K-1, or strings mapped to indices in sorted order.
// IDX (MNIST, Fashion-MNIST, plain or gzipped): pixels are scaled to [0, 1] and images keep their
// {1, H, W} shape. Readers throw InvalidArgument with the reader's message.
#ifndef DROPNET_ENGINE_DATA_H_
#define DROPNET_ENGINE_DATA_H_

#include <cstdint>
#include <functional>
#include <istream>
#include <string>
#include <string_view>
#include <vector>

#include "server/engine/loss.h"
#include "server/engine/tensor.h"

namespace dropnet::engine {

struct Dataset {
  Matrix x;           // rows x features
  Matrix y;           // rows x targets; a class index per row when classifying
  Shape input_shape;  // layout of one row of x
  Task task = Task::kClassification;
  int num_classes = 0;                     // classification: 1 + the largest label
  std::vector<std::string> feature_names;  // CSV header, when read from CSV
  std::vector<std::string> class_names;    // string labels, in index order, when the CSV had them
  std::string target_name;
  // The model's units are x * input_scale: x holds the values as the file had them (IDX images
  // are read scaled, 1; the service keeps raw pixels with 1/255).
  float input_scale = 1.0f;

  int64_t rows() const { return x.rows(); }
};

struct CsvOptions {
  std::string target;  // target column name; empty: the last column
  Task task = Task::kClassification;
};

// Parses CSV text. Throws InvalidArgument with the line and column of the first bad value.
Dataset ReadCsv(std::istream& in, const CsvOptions& options);

// What StreamCsv tells of a CSV data set besides its rows.
struct CsvStream {
  int64_t rows = 0;
  std::vector<std::string> feature_names;
  std::string target_name;
  // Classification: the class of each distinct label text, in the order the texts first
  // appear (the row sink's target is that order's index); num_classes and class_names as in
  // Dataset.
  std::vector<float> class_of;
  int num_classes = 0;
  std::vector<std::string> class_names;
};

// One row of StreamCsv: `width` features and the target (regression: the number; classification:
// the index of the row's label text among the distinct ones, see CsvStream::class_of).
using CsvRowSink = std::function<void(const float* features, size_t width, float target)>;

// ReadCsv for a data set too large to hold twice: hands each row to `row` instead of keeping it,
// with the same checks and errors. Polls `should_stop` (when set) every few thousand rows and
// throws Cancelled when it answers true.
CsvStream StreamCsv(std::istream& in, const CsvOptions& options, const CsvRowSink& row,
                    const std::function<bool()>& should_stop = nullptr);
Dataset LoadCsv(const std::string& path, const CsvOptions& options);

// Reads an IDX image file and its label file (either may be gzipped).
Dataset LoadIdx(const std::string& images_path, const std::string& labels_path);
// The same from the files' bytes; the names only go into error messages.
Dataset ReadIdx(std::string_view images, std::string_view labels,
                const std::string& images_name = "images",
                const std::string& labels_name = "labels");

// Rows `rows` of `data`, in that order.
Dataset Subset(const Dataset& data, const std::vector<int64_t>& rows);

// A seeded random split: `second` gets round(fraction * rows) rows, `first` the rest.
void SplitDataset(const Dataset& data, double fraction, uint64_t seed, Dataset* first,
                  Dataset* second);

// Per-feature standardisation (x - mean) / std, fitted on training rows only. Constant features
// keep scale 1.
struct Standardizer {
  RowVector mean;
  RowVector scale;
  static Standardizer Fit(const Matrix& x);
  void Apply(Matrix* x) const;
  bool empty() const { return mean.size() == 0; }
};

// A seeded permutation of 0..n-1 (Fisher-Yates on SplitMix64).
std::vector<int64_t> Permutation(int64_t n, uint64_t seed);

}  // namespace dropnet::engine

#endif  // DROPNET_ENGINE_DATA_H_
