// The one prediction core that every protocol's handlers are thin over: dropnet.v1's Predict and
// PredictUncertainty (service.cc) and the Open Inference Protocol's ModelInfer, over gRPC
// (inference_service.h) and HTTP (server/http/oip_routes.h). A handler converts its request to
// a snapshot, a WireTensor of inputs and a PredictionQuery, runs RunPrediction on the thread the
// CallScheduler gave it, and converts the Prediction back: the same numbers, bit for bit, for the
// same inputs, mode, T and seed, whichever protocol asked.
#ifndef DROPNET_SERVICE_PREDICTION_H_
#define DROPNET_SERVICE_PREDICTION_H_

#include <cstdint>
#include <functional>
#include <optional>
#include <vector>

#include "server/engine/mc.h"
#include "server/service/request_wire.h"
#include "server/service/snapshot.h"

namespace dropnet::service {

struct ServiceConfig;  // service.h

struct PredictionQuery {
  bool monte_carlo = false;         // false: eval mode
  int samples = 0;                  // T; 0: the server's default
  std::optional<uint64_t> seed;     // none: a fresh one (FreshSeed)
  double interval = 0;              // regression central interval; 0: the engine's default (0.95)
  bool keep_samples = false;        // also return every sample's outputs
  const char* field = "inputs";     // names the inputs in errors
  const char* instead = "Predict";  // the deterministic call a model without dropout should use
};

struct Prediction {
  int64_t rows = 0;
  // Eval mode: outputs (probabilities or values) and, for a Gaussian head, their variance.
  engine::Matrix output, variance;
  // Monte-Carlo: the estimator's result and the options it ran with (T, seed, interval).
  engine::McResult mc;
  engine::McOptions options;
};

// A seed for a call that gave none, from a per-thread SplitMix64 sequence seeded once from the
// system's entropy.
uint64_t FreshSeed();

// T for a call that asked for `requested` (0: `default_samples`): INVALID_ARGUMENT when not
// positive, RESOURCE_EXHAUSTED past `max_samples`.
int ResolveSamples(int requested, int default_samples, int max_samples);

// The Monte-Carlo options of query `q` (samples, seed and interval) for `snap`: its T (or the
// default, within the limit), its seed (or a fresh one), `threads` engine threads, the memory
// budget and the model's tau. FAILED_PRECONDITION for a model without a stochastic layer (its
// samples would all be equal, and a zero spread would read as certainty; the message names
// q.instead), INVALID_ARGUMENT for an interval outside (0, 1).
engine::McOptions MonteCarloOptions(const PredictionQuery& q, const ServiceConfig& config,
                                    const Snapshot& snap, int threads,
                                    const std::function<bool()>& should_stop);

// A call's prediction work, checked and ready for the engine: its model version, its rows (after
// the model's input transform) and, for Monte Carlo, its options (T, seed, interval).
struct PreparedPrediction {
  const Snapshot* snap = nullptr;
  engine::Matrix x;
  bool monte_carlo = false;
  engine::McOptions options;  // Monte Carlo; threads and should_stop are set when it computes
};

// Reads `inputs` for `snap` (the checks of convert.h's FromTensor, at most config.max_batch_rows
// rows, the model's standardisation) and resolves the query's options: the checks of
// RunPrediction, without computing. `snap` must outlive the result.
PreparedPrediction PreparePrediction(const Snapshot& snap, const WireTensor& inputs,
                                     const PredictionQuery& q, const ServiceConfig& config);

// Computes `parts` on `threads` engine threads and returns each part's prediction: one part in
// eval mode or with Monte-Carlo dropout, or several eval parts of one model version stacked into
// one engine call, each part's answer the one it gets alone, bit for bit, when
// engine::RowsIndependentOfBatch holds for the model. (A Monte-Carlo call is already a batch of
// T passes, and its products skip the columns its one input leaves zero in every pass, which
// stacked inputs would not share: merged Monte-Carlo calls run one after the other.)
// `should_stop` (may be empty) is polled between Monte-Carlo chunks.
std::vector<Prediction> ComputePredictions(const std::vector<const PreparedPrediction*>& parts,
                                           int threads, const std::function<bool()>& should_stop);

// Reads `inputs` for `snap` (the checks of convert.h's FromTensor, at most config.max_batch_rows
// rows, the model's standardisation) and computes them in eval mode, or with Monte-Carlo dropout,
// on `threads` engine threads. Throws ServiceError / engine errors for bad requests:
// FAILED_PRECONDITION for MC on a model without a stochastic layer, INVALID_ARGUMENT for an
// interval outside (0, 1), RESOURCE_EXHAUSTED for too many rows, samples or returned values.
// `should_stop` (may be empty) is polled between Monte-Carlo chunks.
Prediction RunPrediction(const Snapshot& snap, const WireTensor& inputs, const PredictionQuery& q,
                         const ServiceConfig& config, int threads,
                         const std::function<bool()>& should_stop);

}  // namespace dropnet::service

#endif  // DROPNET_SERVICE_PREDICTION_H_
