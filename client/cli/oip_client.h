// `--protocol v2` of `dropnet predict` and `dropnet uncertainty`: the same questions asked
// through the Open Inference Protocol's ModelInfer (inference.GRPCInferenceService, KServe v2)
// instead of dropnet.v1, and the answers put in dropnet.v1's response messages so that the
// command prints them as it prints dropnet.v1's.
#ifndef DROPNET_CLIENT_CLI_OIP_CLIENT_H_
#define DROPNET_CLIENT_CLI_OIP_CLIENT_H_

#include <cstdint>
#include <optional>
#include <string>

#include "client/client.h"

namespace dropnet::cli {

// Eval mode: ModelInfer without parameters, of `version` (a number, a label or "": the model's
// default). Throws client::ClientError for a failed call.
v1::PredictResponse PredictV2(const client::Client& c, const std::string& model,
                              const std::string& version, const client::Matrix& x);

// Monte-Carlo dropout: ModelInfer with mc_samples (0: the server's default T, from the model's
// metadata) and seed.
v1::PredictUncertaintyResponse UncertaintyV2(const client::Client& c, const std::string& model,
                                             const std::string& version, const client::Matrix& x,
                                             int samples, std::optional<uint64_t> seed);

}  // namespace dropnet::cli

#endif  // DROPNET_CLIENT_CLI_OIP_CLIENT_H_
