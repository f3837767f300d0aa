// DataError: what the CSV and IDX readers throw when a file cannot be read or is malformed. The
// message names the file or the line and column at fault.
#ifndef DROPNET_COMMON_DATAIO_ERROR_H_
#define DROPNET_COMMON_DATAIO_ERROR_H_

#include <stdexcept>

namespace dropnet::dataio {

class DataError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

}  // namespace dropnet::dataio

#endif  // DROPNET_COMMON_DATAIO_ERROR_H_
