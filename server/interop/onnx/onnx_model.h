// Reading and writing ONNX models as dropnet checkpoints.
//
// ImportOnnx maps a sequential ONNX graph (the shape of what torch.onnx.export writes for an
// nn.Sequential-like model: dense, convolution, pooling, batch norm, activations, LSTM/GRU,
// Dropout) to a Checkpoint: a ModelSpec and its parameters and buffers, ready for
// service::FromCheckpoint. ExportOnnx writes a checkpoint as an ONNX model (opset 13) whose
// dropout layers are Dropout nodes with a training_mode input. GELU, which has no operator
// before opset 20, travels both ways as the five nodes PyTorch writes for it: Div(x, sqrt(2)) ->
// Erf -> Add(1) -> Mul(x) -> Mul(0.5). Both only convert: the spec is validated by the service
// when the checkpoint is loaded.
#ifndef DROPNET_INTEROP_ONNX_ONNX_MODEL_H_
#define DROPNET_INTEROP_ONNX_ONNX_MODEL_H_

#include <stdexcept>
#include <string>
#include <vector>

#include "dropnet/v1/model.pb.h"

namespace dropnet::interop {

// The opsets (of the default ONNX domain) that ImportOnnx reads, and the one ExportOnnx writes.
inline constexpr int kMinImportOpset = 7;
inline constexpr int kMaxImportOpset = 17;
inline constexpr int kExportOpset = 13;

// Reads a serialized ONNX ModelProto. `task` TASK_UNSPECIFIED takes the task the file's
// metadata names (a file ExportOnnx wrote), else classification when the graph ends in Softmax
// or LogSoftmax and regression otherwise. Throws engine::InvalidArgument naming the node, its op
// type and why for anything it cannot map ("node '/net/net.3/Elu' (Elu): dropnet has no elu
// layer"); nothing is returned half-made.
v1::Checkpoint ImportOnnx(const std::string& bytes, v1::Task task);

// Thrown by ExportOnnx when a layer cannot be written in the asked mode.
class ExportRefused : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

struct OnnxExport {
  std::string bytes;                  // the serialized ModelProto
  std::vector<std::string> warnings;  // layers written in their eval form, one line each
};

// Writes a checkpoint. train_mode: dropout nodes get training_mode = true (for runtimes that
// honour it; ONNX Runtime removes Dropout nodes at load), and a layer whose randomness ONNX cannot
// express is refused (ExportRefused) instead of written in its eval form with a warning.
OnnxExport ExportOnnx(const v1::Checkpoint& checkpoint, bool train_mode);

}  // namespace dropnet::interop

#endif  // DROPNET_INTEROP_ONNX_ONNX_MODEL_H_
