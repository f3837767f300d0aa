// The CSV reader: one header row, then numbers, with at most one column kept as text (a label or
// target). The engine reads data sets with it, and the client the rows it sends for prediction.
//
// One quoting rule (RFC 4180 within a line): a field may be enclosed in double quotes, inside
// which a comma is part of the field and "" stands for one quote. Spaces and tabs around a field
// are dropped, and so are carriage returns outside quotes. Blank lines are skipped. A number is
// the whole field in std::from_chars' decimal syntax (no leading '+') and must be finite.
#ifndef DROPNET_COMMON_DATAIO_CSV_H_
#define DROPNET_COMMON_DATAIO_CSV_H_

#include <cstddef>
#include <cstdint>
#include <functional>
#include <istream>
#include <string>
#include <string_view>
#include <vector>

#include "common/dataio/error.h"

namespace dropnet::dataio {

// The fields of one line.
std::vector<std::string> SplitCsvLine(std::string_view line);

// True when `text` is one number, all of it; *value is then that number.
bool ParseFloat(std::string_view text, float* value);

// What the label column (when there is one) must hold in every row.
enum class LabelRule {
  kAny,           // anything, an empty field too
  kPresent,       // a non-empty field
  kFiniteNumber,  // a finite number
};

struct CsvOptions {
  // The column kept as text, by name. Empty: the last column when last_is_label, else none (every
  // column is a number).
  std::string label_column;
  bool last_is_label = false;
  LabelRule label_rule = LabelRule::kAny;
};

struct CsvTable {
  static constexpr size_t kNoLabel = static_cast<size_t>(-1);

  std::vector<std::string> header;         // every column, in file order
  std::vector<std::string> feature_names;  // the header without the label column
  size_t label_index = kNoLabel;           // the label column's place in header
  int64_t rows = 0;
  std::vector<float> values;        // rows x feature_names.size(), row-major
  std::vector<std::string> labels;  // the label field of each row, with a label column
};

// Reads CSV text. Throws DataError naming the line and column of the first bad value (the header
// is line 1), or the label column that is not in the header. A file with only a header row gives
// a table of 0 rows; a table with a label column has at least one other column.
CsvTable ReadCsv(std::istream& in, const CsvOptions& options);

// One data row of ReadCsvRows: its numbers (feature_names.size() of them, in file order) and its
// label field (empty without a label column).
using CsvRowFn = std::function<void(const float* values, const std::string& label)>;

// ReadCsv a row at a time, for text too large to hold parsed twice: `table` gets the header,
// feature names, label index and the number of rows read (its values and labels stay empty), and
// `row` each data row as it is read, with the same checks and errors as ReadCsv.
void ReadCsvRows(std::istream& in, const CsvOptions& options, const CsvRowFn& row, CsvTable* table);

}  // namespace dropnet::dataio

#endif  // DROPNET_COMMON_DATAIO_CSV_H_
