// `dropnet bench`: a load generator for a running server.
//
// For one model it measures, at several concurrency levels, the latency and throughput of four
// workloads: the empty-RPC floor (grpc.health.v1 Check), Predict with one row, Predict with a
// batch, and PredictUncertainty with T samples for one row; and on request the Open Inference
// Protocol's ModelInfer with one row over gRPC (infer) and REST (rest). Each concurrency worker is
// a thread with a blocking client that sends its next call as soon as the previous one returns (a
// closed loop); by default every worker has a connection of its own (see
// BenchOptions::shared_channel).
#ifndef DROPNET_CLIENT_CLI_BENCH_H_
#define DROPNET_CLIENT_CLI_BENCH_H_

#include <cstdint>
#include <iosfwd>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "client/client.h"

namespace dropnet::cli {

// kInfer and kRest are the Open Inference Protocol's ModelInfer with one row, eval mode, over gRPC
// (raw_input_contents) and over the HTTP port (JSON).
enum class Workload { kHealth, kPredictOne, kPredictBatch, kUncertainty, kInfer, kRest };

// "health", "predict", "predict-batch", "uncertainty", "infer", "rest"; throws
// std::invalid_argument otherwise.
Workload ParseWorkload(const std::string& name);

struct BenchOptions {
  std::string model;
  std::vector<int> concurrency = {1, 2, 4, 8};
  std::vector<Workload> workloads = {Workload::kHealth, Workload::kPredictOne,
                                     Workload::kPredictBatch, Workload::kUncertainty};
  double duration_seconds = 3;  // measured time per workload and level
  int64_t count = 0;            // > 0: this many measured calls per workload and level instead
  double warmup_seconds = 1;    // unrecorded calls before each measurement
  int batch = 256;              // rows of a Predict batch
  int samples = 100;            // T of PredictUncertainty
  std::string data_path;        // CSV rows to send; empty: uniform random values in [0, 1)
  std::string http;             // host:port of the HTTP port, for the rest workload (plaintext)
  std::string target_column;    // a CSV column to leave out
  uint64_t seed = 1;            // picks the random rows
  // One channel (and so one HTTP/2 connection) shared by every worker, instead of a connection
  // per worker. gRPC multiplexes the calls of a shared channel over one connection, which one
  // server thread reads: the calls queue behind each other before the server sees them.
  bool shared_channel = false;
};

struct BenchResult {
  Workload workload;
  std::string name;  // e.g. "predict b256"
  int rows = 0;      // input rows per call
  int samples = 0;   // T, for PredictUncertainty
  int concurrency = 0;
  int64_t calls = 0;  // measured calls that succeeded
  int64_t errors = 0;
  std::string first_error;
  double seconds = 0;  // measured window
  double p50_ms = 0, p90_ms = 0, p99_ms = 0, mean_ms = 0, max_ms = 0;
  double calls_per_second = 0, rows_per_second = 0;
  // Cores this client kept busy meanwhile (CPU seconds over wall seconds, warm-up included): on a
  // machine shared with the server, what the load generator took from it.
  double client_cpu = 0;
};

struct BenchReport {
  std::string server, model, channels;
  int64_t model_version = 0;
  int64_t input_width = 0;
  std::string inputs;  // "random" or the CSV path
  double duration_seconds = 0, warmup_seconds = 0;
  int64_t count = 0;
  std::vector<BenchResult> results;

  // p50 of `w` over p50 of health at the same concurrency; NaN when one is missing.
  double RatioToFloor(Workload w, int concurrency) const;
  nlohmann::json ToJson() const;
  void PrintTable(std::ostream& out) const;
  // The results as CSV: a header, then a row per workload and level with the fields of ToJson's
  // results (first_error empty when there was none).
  void PrintCsv(std::ostream& out) const;
};

// Runs every workload at every level against the server of `client_options`; progress lines go
// to `progress` (may be null). Throws dropnet::client::ClientError when the model cannot be read.
BenchReport RunBench(const client::ClientOptions& client_options, const BenchOptions& options,
                     std::ostream* progress);

}  // namespace dropnet::cli

#endif  // DROPNET_CLIENT_CLI_BENCH_H_
