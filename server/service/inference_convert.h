// The Open Inference Protocol's (KServe v2) messages <-> the prediction core (prediction.h):
// which model version a request names, what a ModelInferRequest asks (its input tensor, its
// Monte-Carlo parameters, the outputs it wants) and the ModelInferResponse and
// ModelMetadataResponse that answer. Pure functions over a snapshot, shared by the gRPC service
// (inference_service.h) and the REST routes (server/http/oip_routes.h), which maps JSON to and
// from these messages.
#ifndef DROPNET_SERVICE_INFERENCE_CONVERT_H_
#define DROPNET_SERVICE_INFERENCE_CONVERT_H_

#include <string>
#include <vector>

#include "inference/grpc_predict_v2.pb.h"
#include "server/service/prediction.h"
#include "server/service/registry.h"

namespace dropnet::service {

// Output names.
inline constexpr char kOutProbabilities[] = "probabilities";  // classifier: [B, classes]
inline constexpr char kOutMean[] = "mean";                    // regressor: [B, outputs]
inline constexpr char kOutVariance[] = "variance";  // regressor: eval Gaussian head, or MC total
inline constexpr char kOutPredictedClass[] = "predicted_class";        // classifier: INT64 [B]
inline constexpr char kOutStd[] = "std";                               // MC: [B, C]
inline constexpr char kOutPredictiveEntropy[] = "predictive_entropy";  // MC classifier: [B]
inline constexpr char kOutExpectedEntropy[] = "expected_entropy";      // MC classifier: [B]
inline constexpr char kOutMutualInformation[] = "mutual_information";  // MC classifier: [B]
inline constexpr char kOutVariationRatio[] = "variation_ratio";        // MC classifier: [B]
inline constexpr char kOutIntervalLow[] = "interval_low";              // MC regressor: [B, C]
inline constexpr char kOutIntervalHigh[] = "interval_high";            // MC regressor: [B, C]
inline constexpr char kOutSamples[] = "samples";                       // MC, asked: [T, B, C]
// The input's name in the metadata (a request may name its one input as it likes).
inline constexpr char kInputName[] = "input";

// The snapshot that answers for `model` at `version` (ModelInfer's model_version, a REST path's
// /versions/V): Registry::Resolve's, the resolver dropnet.v1 uses too, so "" is the model's
// default, a number that version and anything else a label.
SnapshotPtr ResolveModelVersion(const Registry& registry, const std::string& model,
                                const std::string& version);

// What a ModelInferRequest asks, read and checked against its model.
struct InferPlan {
  WireTensor inputs;                 // its values point into the request, which must outlive it
  PredictionQuery query;             // eval, or Monte-Carlo with T, seed and interval
  std::vector<std::string> outputs;  // the outputs to answer with, in order
  bool raw_output = false;           // answer in raw_output_contents (the request sent raw)
};

// Reads `req` for `snap`. INVALID_ARGUMENT naming the field and what was expected for: not
// exactly one input, a datatype other than FP32, a shape that is not [batch, <the model's
// input>], values in both contents and raw_input_contents (or neither, or in another datatype's
// field), raw bytes that are not whole floats, a parameter of the wrong type or range, an output
// this model or mode does not produce (the message lists those it does). A fresh seed for a
// Monte-Carlo request without one is below 2^53, so that JSON numbers carry it exactly.
InferPlan ReadInferRequest(const inference::ModelInferRequest& req, const Snapshot& snap);

// The answer to `req`, planned as `plan`, from `p` computed by `snap`.
void WriteInferResponse(const inference::ModelInferRequest& req, const InferPlan& plan,
                        const Snapshot& snap, const Prediction& p,
                        inference::ModelInferResponse* resp);

// The outputs `snap` produces in eval mode (`monte_carlo` false) or with Monte-Carlo dropout.
std::vector<std::string> AvailableOutputs(const Snapshot& snap, bool monte_carlo);
// The outputs answered when a request names none.
std::vector<std::string> DefaultOutputs(const Snapshot& snap, bool monte_carlo);

// ModelMetadata: versions, platform, the input ([-1, dims...]), every output with its datatype
// and shape, and the parameters task, class_names, stochastic_layers and default_mc_samples.
void DescribeModel(const Snapshot& snap, int default_samples,
                   inference::ModelMetadataResponse* resp);

}  // namespace dropnet::service

#endif  // DROPNET_SERVICE_INFERENCE_CONVERT_H_
