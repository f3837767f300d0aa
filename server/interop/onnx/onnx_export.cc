#include "server/interop/onnx/onnx_model.h"
namespace dropnet::interop {
OnnxExport ExportOnnx(const v1::Checkpoint&, bool) { throw ExportRefused("todo"); }
}  // namespace dropnet::interop
