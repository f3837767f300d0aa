// Output of the `dropnet` command line: number formatting, and tables printed aligned, as CSV or
// as JSON objects keyed by the header.
#ifndef DROPNET_CLIENT_CLI_OUTPUT_H_
#define DROPNET_CLIENT_CLI_OUTPUT_H_

#include <cstdint>
#include <ostream>
#include <string>
#include <vector>

#include <google/protobuf/message.h>
#include <google/protobuf/repeated_field.h>
#include <nlohmann/json.hpp>

#include "dropnet/v1/service.pb.h"

namespace dropnet::cli {

// From the first call on, Ctrl-C sets Interrupted() instead of ending the process, so that a long
// call (train, rank) cancels on the server and says so.
void CatchInterrupts();
bool Interrupted();

enum class Format { kTable, kCsv, kJson };

// "csv", "json", anything else: a table.
Format ParseFormat(const std::string& f);

// v with `digits` decimals; "-" for NaN.
std::string Fixed(double v, int digits = 4);

// v in the fewest digits that read back as exactly the same float (or double): "0.1", "1e-05",
// "nan", "inf". What CSV output prints, so that a parser gets the very value the server sent.
std::string Exact(float v);
std::string Exact(double v);

// v as a JSON number that reads back as exactly the same float, in its fewest digits (0.1 rather
// than 0.10000000149011612); null for NaN and infinities, which JSON cannot hold.
nlohmann::json JsonNumber(float v);

// A cell of a table: Fixed(v) for people (Format::kTable), Exact(v) for CSV.
std::string Cell(float v, Format f);

// Rows of cells printed as an aligned table, CSV, or JSON objects keyed by the header.
struct Table {
  std::vector<std::string> header;
  std::vector<std::vector<std::string>> rows;
  std::vector<nlohmann::json> json_rows;  // typed values for --format json
  // --format json: each element of the array on a line of its own, not indented inside.
  bool json_row_per_line = false;

  void Print(std::ostream& out, Format f) const;
};

// Prints t to stdout, or to the file `output` when given (with a note on stderr).
void Emit(const Table& t, Format f, const std::string& output);

// A message as JSON with the proto field names.
std::string Json(const google::protobuf::Message& m);

std::string TaskName(v1::Task t);

// A shape as "1x28x28".
std::string ShapeText(const google::protobuf::RepeatedField<int32_t>& s);

// A progress bar of `width` characters, '#' for the done fraction.
std::string Bar(double fraction, int width);

// Seconds as "42s" or "3m07s"; "?" when unknown.
std::string Duration(double s);

}  // namespace dropnet::cli

#endif  // DROPNET_CLIENT_CLI_OUTPUT_H_
