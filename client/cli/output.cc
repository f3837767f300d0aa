#include "client/cli/output.h"

#include <algorithm>
#include <atomic>
#include <charconv>
#include <cmath>
#include <csignal>
#include <fstream>
#include <iomanip>
#include <iostream>
#include <sstream>
#include <stdexcept>

#include <google/protobuf/util/json_util.h>

namespace dropnet::cli {

namespace {
std::atomic<bool> interrupted{false};
}  // namespace

void CatchInterrupts() {
  std::signal(SIGINT, [](int) { interrupted = true; });
}

bool Interrupted() { return interrupted.load(); }

Format ParseFormat(const std::string& f) {
  if (f == "csv") return Format::kCsv;
  if (f == "json") return Format::kJson;
  return Format::kTable;
}

std::string Fixed(double v, int digits) {
  if (std::isnan(v)) return "-";
  std::ostringstream s;
  s << std::fixed << std::setprecision(digits) << v;
  return s.str();
}

namespace {
template <typename T>
std::string ShortestText(T v) {
  char buf[64];
  const auto r = std::to_chars(buf, buf + sizeof(buf), v);
  return std::string(buf, r.ptr);
}
}  // namespace

std::string Exact(float v) { return ShortestText(v); }
std::string Exact(double v) { return ShortestText(v); }

nlohmann::json JsonNumber(float v) {
  if (!std::isfinite(v)) return nullptr;
  // The double nearest the float's shortest decimal: nlohmann prints a double in its shortest
  // form, which is then that decimal, and it reads back as the float.
  const std::string text = ShortestText(v);
  double d = 0;
  std::from_chars(text.data(), text.data() + text.size(), d);
  return d;
}

std::string Cell(float v, Format f) { return f == Format::kTable ? Fixed(v) : Exact(v); }

void Table::Print(std::ostream& out, Format f) const {
  if (f == Format::kJson && json_row_per_line) {
    out << "[";
    for (size_t i = 0; i < json_rows.size(); ++i)
      out << (i ? ",\n " : "\n ") << json_rows[i].dump();
    out << "\n]\n";
    return;
  }
  if (f == Format::kJson) {
    out << nlohmann::json(json_rows).dump(2) << "\n";
    return;
  }
  if (f == Format::kCsv) {
    auto line = [&](const std::vector<std::string>& cells) {
      for (size_t i = 0; i < cells.size(); ++i) out << (i ? "," : "") << cells[i];
      out << "\n";
    };
    line(header);
    for (const auto& r : rows) line(r);
    return;
  }
  std::vector<size_t> w(header.size());
  for (size_t i = 0; i < header.size(); ++i) w[i] = header[i].size();
  for (const auto& r : rows) {
    for (size_t i = 0; i < r.size() && i < w.size(); ++i) w[i] = std::max(w[i], r[i].size());
  }
  auto line = [&](const std::vector<std::string>& cells) {
    for (size_t i = 0; i < cells.size(); ++i) {
      out << (i ? "  " : "") << std::left << std::setw(static_cast<int>(w[i])) << cells[i];
    }
    out << "\n";
  };
  line(header);
  for (const auto& r : rows) line(r);
}

void Emit(const Table& t, Format f, const std::string& output) {
  if (output.empty()) {
    t.Print(std::cout, f);
    return;
  }
  std::ofstream out(output);
  if (!out) throw std::runtime_error("cannot write '" + output + "'");
  t.Print(out, f);
  std::cerr << "wrote " << t.rows.size() << " rows to " << output << "\n";
}

std::string Json(const google::protobuf::Message& m) {
  std::string s;
  google::protobuf::util::JsonPrintOptions o;
  o.add_whitespace = true;
  o.preserve_proto_field_names = true;
  (void)google::protobuf::util::MessageToJsonString(m, &s, o);
  return s;
}

std::string TaskName(v1::Task t) {
  return t == v1::TASK_REGRESSION ? "regression" : "classification";
}

std::string ShapeText(const google::protobuf::RepeatedField<int32_t>& s) {
  std::string out;
  for (int i = 0; i < s.size(); ++i) out += (i ? "x" : "") + std::to_string(s[i]);
  return out;
}

std::string Bar(double fraction, int width) {
  const int filled = static_cast<int>(std::round(std::clamp(fraction, 0.0, 1.0) * width));
  return std::string(filled, '#') + std::string(width - filled, '.');
}

std::string Duration(double s) {
  if (!std::isfinite(s) || s < 0) return "?";
  std::ostringstream o;
  const int secs = static_cast<int>(std::round(s));
  if (secs >= 60)
    o << secs / 60 << "m" << std::setw(2) << std::setfill('0') << secs % 60 << "s";
  else
    o << secs << "s";
  return o.str();
}

}  // namespace dropnet::cli
