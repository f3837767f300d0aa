// Fuzzes the CSV reader (engine::ReadCsv) with its option combinations, then what the service
// does with a data set it read: standardisation, a validation split, the stored form and back.
//
// The first byte picks the options: bit 0 regression, bits 1-2 the target column ("" for the
// last, "y", "label" or "a").
#include <cstddef>
#include <cstdint>
#include <sstream>
#include <string>

#include "server/engine/data.h"
#include "server/service/convert.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  static const char* const kTargets[] = {"", "y", "label", "a"};
  dropnet::engine::CsvOptions options;
  options.task =
      data[0] & 1 ? dropnet::engine::Task::kRegression : dropnet::engine::Task::kClassification;
  options.target = kTargets[(data[0] >> 1) & 3];
  std::istringstream in(std::string(reinterpret_cast<const char*>(data + 1), size - 1));
  dropnet::engine::Dataset d;
  try {
    d = dropnet::engine::ReadCsv(in, options);
  } catch (const dropnet::engine::InvalidArgument&) {
    return 0;
  }
  auto standardizer = dropnet::engine::Standardizer::Fit(d.x);
  standardizer.Apply(&d.x);
  dropnet::engine::Dataset train, validation;
  dropnet::engine::SplitDataset(d, 0.25, 1, &train, &validation);
  dropnet::v1::StoredDataset stored;
  dropnet::service::ToStored(d, "fuzz", &stored);
  dropnet::service::FromStored(stored);
  return 0;
}
