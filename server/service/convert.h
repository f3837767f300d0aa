// Conversions between dropnet.v1 messages and the engine, with the validation of every field.
#ifndef DROPNET_SERVICE_CONVERT_H_
#define DROPNET_SERVICE_CONVERT_H_

#include <cstdint>
#include <span>
#include <string>

#include "dropnet/v1/model.pb.h"
#include "server/engine/data.h"
#include "server/engine/network.h"
#include "server/service/snapshot.h"

namespace dropnet::service {

struct SpecLimits {
  int max_layers = 256;
  int64_t max_parameters = 100'000'000;
  int64_t max_width = 1 << 20;  // features of any activation row
};

engine::Task ToEngine(v1::Task task);
// Throws InvalidArgument naming `field` unless `task` is TASK_UNSPECIFIED or a known task.
void CheckTask(const char* field, v1::Task task);
v1::Task ToProto(engine::Task task);
engine::LossKind ResolveLoss(const v1::ModelSpec& spec);

// Validates a spec and builds its engine form. Throws InvalidArgument (or ServiceError with
// RESOURCE_EXHAUSTED for limits) naming the field, e.g. "layers[3].rate must be in [0, 1),
// got 1.5".
engine::NetworkSpec ToNetworkSpec(const v1::ModelSpec& spec, const SpecLimits& limits);

// Builds a fresh snapshot (version 1, initial parameters) from a validated spec.
std::shared_ptr<Snapshot> NewSnapshot(const std::string& name, const v1::ModelSpec& spec,
                                      const SpecLimits& limits);

// Checkpoint <-> snapshot. FromCheckpoint checks every tensor's shape against the spec.
void ToCheckpoint(const Snapshot& s, v1::Checkpoint* out);
std::shared_ptr<Snapshot> FromCheckpoint(const v1::Checkpoint& c, const SpecLimits& limits);

// Standardisation <-> its message (empty: none). FromStandardization checks the width (when
// width >= 0), finite means and positive scales, naming `field`.
void ToStandardization(const engine::Standardizer& s, v1::Standardization* out);
engine::Standardizer FromStandardization(const v1::Standardization& st, int64_t width,
                                         const std::string& field);

// A batch tensor -> rows x row_size. Throws InvalidArgument naming `field` for an empty batch, a
// shape whose per-row size differs from row_size, a value count that does not match the shape,
// or a NaN/Inf value (with its row and column).
engine::Matrix FromTensor(const v1::Tensor& t, int64_t row_size, const char* field);
// FromTensor's parts, for values that are not in a v1.Tensor (request_wire.h):
// - the checks of a shape and a value count; returns the number of rows;
int64_t CheckBatchShape(std::span<const int64_t> shape, int64_t value_count, int64_t row_size,
                        const char* field);
// - copies n little-endian floats from bytes at any alignment, and says whether every one is
//   finite, in one pass (a request batch is read once, not once to check and once to copy);
bool CopyFinite(const char* src, float* dst, int64_t n);
// - throws the error naming the first non-finite value of m (one CopyFinite found).
[[noreturn]] void FailNonFinite(const engine::Matrix& m, const char* field);
void ToTensor(const engine::Matrix& m, v1::Tensor* out);
void ToTensor(const Eigen::VectorXf& v, v1::Tensor* out);

void ToStored(const engine::Dataset& d, const std::string& name, v1::StoredDataset* out);
engine::Dataset FromStored(const v1::StoredDataset& s);

// Milliseconds since the Unix epoch: the created_unix_ms of versions and data sets.
int64_t UnixMillisNow();

}  // namespace dropnet::service

#endif  // DROPNET_SERVICE_CONVERT_H_
