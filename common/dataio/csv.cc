#include "common/dataio/csv.h"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <sstream>

namespace dropnet::dataio {
namespace {

std::string Trimmed(const std::string& field) {
  const size_t b = field.find_first_not_of(" \t"), e = field.find_last_not_of(" \t");
  return b == std::string::npos ? "" : field.substr(b, e - b + 1);
}

bool IsFinite(std::string_view text, float* value) {
  return ParseFloat(text, value) && std::isfinite(*value);
}

std::string Where(int64_t line, size_t column, const std::string& name) {
  std::ostringstream s;
  s << "line " << line << ", column " << column + 1 << " (" << name << ")";
  return s.str();
}

// The label column's place in `header`, or kNoLabel.
size_t LabelIndex(const std::vector<std::string>& header, const CsvOptions& options) {
  if (options.label_column.empty()) {
    return options.last_is_label ? header.size() - 1 : CsvTable::kNoLabel;
  }
  auto it = std::find(header.begin(), header.end(), options.label_column);
  if (it == header.end()) {
    throw DataError("CSV has no column named '" + options.label_column + "'");
  }
  return static_cast<size_t>(it - header.begin());
}

void CheckLabel(const std::string& field, LabelRule rule, int64_t line, size_t column,
                const std::string& name) {
  float v;
  if (rule == LabelRule::kAny) return;
  if (field.empty() || (rule == LabelRule::kFiniteNumber && !IsFinite(field, &v))) {
    throw DataError("CSV target '" + field + "' at " + Where(line, column, name) +
                    (field.empty() ? " is missing" : " is not a finite number"));
  }
}

}  // namespace

std::vector<std::string> SplitCsvLine(std::string_view line) {
  std::vector<std::string> out;
  std::string cur;
  bool quoted = false;
  for (size_t i = 0; i < line.size(); ++i) {
    const char ch = line[i];
    if (quoted) {
      if (ch == '"' && i + 1 < line.size() && line[i + 1] == '"')
        cur += '"', ++i;
      else if (ch == '"')
        quoted = false;
      else
        cur += ch;
    } else if (ch == '"') {
      quoted = true;
    } else if (ch == ',') {
      out.push_back(Trimmed(cur));
      cur.clear();
    } else if (ch != '\r') {
      cur += ch;
    }
  }
  out.push_back(Trimmed(cur));
  return out;
}

bool ParseFloat(std::string_view text, float* value) {
  if (text.empty()) return false;
  const char* end = text.data() + text.size();
  const auto r = std::from_chars(text.data(), end, *value);
  return r.ec == std::errc() && r.ptr == end;
}

void ReadCsvRows(std::istream& in, const CsvOptions& options, const CsvRowFn& row,
                 CsvTable* table) {
  CsvTable& t = *table;
  t = CsvTable();
  std::string line;
  if (!std::getline(in, line)) throw DataError("CSV is empty: a header row is required");
  t.header = SplitCsvLine(line);
  const bool has_label = !options.label_column.empty() || options.last_is_label;
  if (has_label && t.header.size() < 2) {
    throw DataError("CSV needs at least one feature and one target column");
  }
  t.label_index = LabelIndex(t.header, options);
  for (size_t c = 0; c < t.header.size(); ++c) {
    if (c != t.label_index) t.feature_names.push_back(t.header[c]);
  }
  std::vector<float> values(t.feature_names.size());
  std::string label;
  int64_t line_no = 1;
  while (std::getline(in, line)) {
    ++line_no;
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    std::vector<std::string> fields = SplitCsvLine(line);
    if (fields.size() != t.header.size()) {
      std::ostringstream msg;
      msg << "CSV line " << line_no << " has " << fields.size() << " fields, the header has "
          << t.header.size();
      throw DataError(msg.str());
    }
    size_t kept = 0;
    for (size_t c = 0; c < fields.size(); ++c) {
      if (c == t.label_index) {
        CheckLabel(fields[c], options.label_rule, line_no, c, t.header[c]);
        label = std::move(fields[c]);
      } else if (!IsFinite(fields[c], &values[kept++])) {
        throw DataError("CSV value '" + fields[c] + "' at " + Where(line_no, c, t.header[c]) +
                        " is not a finite number");
      }
    }
    ++t.rows;
    row(values.data(), label);
  }
}

CsvTable ReadCsv(std::istream& in, const CsvOptions& options) {
  CsvTable t;
  std::vector<float> values;
  std::vector<std::string> labels;
  const bool has_label = !options.label_column.empty() || options.last_is_label;
  ReadCsvRows(
      in, options,
      [&](const float* v, const std::string& label) {
        values.insert(values.end(), v, v + t.feature_names.size());
        if (has_label) labels.push_back(label);
      },
      &t);
  t.values = std::move(values);
  t.labels = std::move(labels);
  return t;
}

}  // namespace dropnet::dataio
