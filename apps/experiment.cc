// dropnet-experiment: the engine's reference experiments on Fashion-MNIST, reproducible from the
// command line. `fashion-mlp` trains the example MLP and compares deterministic and Monte-Carlo
// dropout predictions; `small-data` pairs dropout 0.5 against no dropout on a small training set.
#include <chrono>
#include <cmath>
#include <cstdio>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>

#include "apps/experiments.h"
#include "server/engine/data.h"
#include "server/engine/mc.h"
#include "server/engine/metrics.h"
#include "server/engine/network.h"
#include "server/engine/thread_pool.h"
#include "server/engine/trainer.h"

namespace en = dropnet::engine;

namespace {

using Matrix = en::Matrix;

struct Common {
  std::string data_dir = "/usr/share/datasets/fashion-mnist";
  int threads = en::HardwareThreads();
};

void LoadFashion(const Common& c, en::Dataset* train, en::Dataset* test) {
  dropnet::apps::LoadFashion(c.data_dir, train, test);
}

// The example network: 784-512-512-10, ReLU, dropout p after each hidden layer.
// The initialisation of the reference experiments' dense layers (--init).
std::string mlp_init = "glorot_uniform";

en::NetworkSpec Mlp(double p, uint64_t seed) {
  en::NetworkSpec spec;
  spec.input = en::Shape{{1, 28, 28}};
  spec.seed = seed;
  auto layer = [](std::string type, int units = 0, double rate = 0) {
    en::LayerConfig c;
    c.type = std::move(type);
    c.units = units;
    c.rate = rate;
    c.init = mlp_init;
    return c;
  };
  spec.layers = {layer("flatten"),       layer("dense", 512), layer("relu"),
                 layer("dropout", 0, p), layer("dense", 512), layer("relu"),
                 layer("dropout", 0, p), layer("dense", 10)};
  if (p == 0)
    spec.layers = {spec.layers[0], spec.layers[1], spec.layers[2],
                   spec.layers[4], spec.layers[5], spec.layers[7]};
  return spec;
}

struct Scores {
  en::ClassificationMetrics det, mc;
};

Scores Score(const en::Network& net, const en::Dataset& test, int mc_samples, int threads,
             uint64_t seed) {
  Scores s;
  Matrix probs =
      en::PredictEval(net, en::Task::kClassification, en::LossKind::kCrossEntropy, test.x, threads);
  s.det = en::ScoreClassification(probs, test.y);
  if (mc_samples > 0) {
    en::McOptions mo;
    mo.samples = mc_samples;
    mo.seed = seed;
    mo.threads = threads;
    Matrix mean(test.rows(), 10);
    dropnet::apps::McPredictBatches(net, test.x, mo, [&](int64_t r0, const en::McResult& r) {
      mean.middleRows(r0, r.mean.rows()) = r.mean;
    });
    s.mc = en::ScoreClassification(mean, test.y);
  }
  return s;
}

int FashionMlp(const Common& c, int epochs, int mc_samples, uint64_t seed, bool quiet) {
  en::Dataset train, test;
  LoadFashion(c, &train, &test);
  en::Network net(Mlp(0.5, seed));
  en::TrainOptions o;
  o.epochs = epochs;
  o.batch_size = 128;
  o.optimizer.type = en::OptimizerKind::kAdam;
  o.optimizer.learning_rate = 1e-3;
  o.seed = seed;
  o.threads = c.threads;
  std::printf(
      "Fashion-MNIST MLP 784-512-512-10, ReLU, dropout 0.5, Adam 1e-3, batch 128, "
      "%d epochs, seed %llu, %d threads, %lld parameters\n",
      epochs, static_cast<unsigned long long>(seed), c.threads,
      static_cast<long long>(net.ParameterCount()));
  const auto t0 = std::chrono::steady_clock::now();
  en::Train(&net, en::Task::kClassification, en::LossKind::kCrossEntropy, train, o,
            [&](const en::TrainProgress& p, const en::Network&) {
              if (p.end_of_epoch) {
                std::printf("epoch %d/%d  loss %.4f  train acc %.4f  %.0f samples/s\n", p.epoch,
                            p.epochs, p.loss, p.metric, p.samples_per_second);
              } else if (!quiet && p.step % 100 == 0) {
                std::printf("  step %lld/%lld  loss %.4f\n", static_cast<long long>(p.step),
                            static_cast<long long>(p.total_steps), p.loss);
              }
              std::fflush(stdout);
            });
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  Scores s = Score(net, test, mc_samples, c.threads, seed);
  std::printf("training took %.1f s (%.1f s an epoch)\n\n", secs, secs / epochs);
  std::printf("| prediction | accuracy | NLL | Brier | ECE |\n|---|---|---|---|---|\n");
  std::printf("| deterministic (eval) | %.4f | %.4f | %.4f | %.4f |\n", s.det.accuracy, s.det.nll,
              s.det.brier, s.det.ece);
  if (mc_samples > 0) {
    std::printf("| MC dropout, T = %d | %.4f | %.4f | %.4f | %.4f |\n", mc_samples, s.mc.accuracy,
                s.mc.nll, s.mc.brier, s.mc.ece);
  }
  return 0;
}

int SmallData(const Common& c, int train_size, int epochs, int seeds, int mc_samples) {
  en::Dataset train, test;
  LoadFashion(c, &train, &test);
  std::printf(
      "Small training set: %d Fashion-MNIST images, %d epochs, MLP 784-512-512-10, Adam "
      "1e-3, batch 128; dropout 0.5 vs none, paired by seed\n\n",
      train_size, epochs);
  std::printf(
      "| seed | acc p=0.5 | acc p=0 | NLL p=0.5 | NLL p=0 | ECE p=0.5 | ECE p=0 |"
      "%s\n|---|---|---|---|---|---|---|%s\n",
      mc_samples ? " MC NLL p=0.5 | MC ECE p=0.5 |" : "", mc_samples ? "---|---|" : "");
  double sum[6] = {0}, mc_sum[2] = {0};
  int nll_wins = 0, ece_wins = 0;
  for (int s = 1; s <= seeds; ++s) {
    auto rows = en::Permutation(train.rows(), 1000 + s);
    rows.resize(train_size);
    en::Dataset small = en::Subset(train, rows);
    Scores res[2];
    for (int k = 0; k < 2; ++k) {
      en::Network net(Mlp(k == 0 ? 0.5 : 0.0, s));
      en::TrainOptions o;
      o.epochs = epochs;
      o.batch_size = 128;
      o.seed = s;
      o.threads = c.threads;
      en::Train(&net, en::Task::kClassification, en::LossKind::kCrossEntropy, small, o);
      res[k] = Score(net, test, k == 0 ? mc_samples : 0, c.threads, s);
    }
    std::printf("| %d | %.4f | %.4f | %.4f | %.4f | %.4f | %.4f |", s, res[0].det.accuracy,
                res[1].det.accuracy, res[0].det.nll, res[1].det.nll, res[0].det.ece,
                res[1].det.ece);
    if (mc_samples) std::printf(" %.4f | %.4f |", res[0].mc.nll, res[0].mc.ece);
    std::printf("\n");
    std::fflush(stdout);
    double v[6] = {res[0].det.accuracy, res[1].det.accuracy, res[0].det.nll,
                   res[1].det.nll,      res[0].det.ece,      res[1].det.ece};
    for (int i = 0; i < 6; ++i) sum[i] += v[i];
    mc_sum[0] += res[0].mc.nll;
    mc_sum[1] += res[0].mc.ece;
    nll_wins += res[0].det.nll < res[1].det.nll;
    ece_wins += res[0].det.ece < res[1].det.ece;
  }
  std::printf("| mean | %.4f | %.4f | %.4f | %.4f | %.4f | %.4f |", sum[0] / seeds, sum[1] / seeds,
              sum[2] / seeds, sum[3] / seeds, sum[4] / seeds, sum[5] / seeds);
  if (mc_samples) std::printf(" %.4f | %.4f |", mc_sum[0] / seeds, mc_sum[1] / seeds);
  std::printf("\n\nDropout has the lower NLL in %d of %d seeds and the lower ECE in %d of %d.\n",
              nll_wins, seeds, ece_wins, seeds);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  en::TuneAllocatorForTraining();
  CLI::App app{"dropnet-experiment: reference experiments of the dropnet engine"};
  app.require_subcommand(1);
  Common c;
  app.add_option("--data-dir", c.data_dir, "Fashion-MNIST IDX directory")->capture_default_str();
  app.add_option("--threads", c.threads, "threads")
      ->capture_default_str()
      ->check(CLI::PositiveNumber);

  int epochs = 3, mc_samples = 100, train_size = 1000, seeds = 5;
  uint64_t seed = 1;
  bool quiet = false;
  auto* mlp = app.add_subcommand("fashion-mlp",
                                 "train the example MLP, report deterministic and MC figures");
  mlp->add_option("--epochs", epochs)->capture_default_str()->check(CLI::PositiveNumber);
  mlp->add_option("--mc-samples", mc_samples, "T for MC dropout (0: skip)")->capture_default_str();
  mlp->add_option("--seed", seed)->capture_default_str();
  mlp->add_flag("--quiet", quiet, "only per-epoch lines");

  int small_epochs = 100;
  auto* small = app.add_subcommand("small-data", "dropout 0.5 vs none on a small training set");
  small->add_option("--train-size", train_size)->capture_default_str()->check(CLI::PositiveNumber);
  small->add_option("--epochs", small_epochs)->capture_default_str()->check(CLI::PositiveNumber);
  small->add_option("--seeds", seeds)->capture_default_str()->check(CLI::PositiveNumber);
  small->add_option("--mc-samples", mc_samples, "T for MC dropout (0: skip)")
      ->capture_default_str();

  // concrete-rates, sparse-vd, fashion-lstm (apps/experiment_learned.cc): run from callbacks.
  dropnet::apps::AddLearnedRateExperiments(&app, &c.data_dir, &c.threads);
  // fashion-cnn, dropconnect-mlp (apps/experiment_conv.cc): run from callbacks.
  dropnet::apps::AddConvExperiments(&app, &c.data_dir, &c.threads);

  app.add_option("--init", mlp_init, "dense initialisation of the MLPs")->capture_default_str();
  CLI11_PARSE(app, argc, argv);
  try {
    if (*mlp) return FashionMlp(c, epochs, mc_samples, seed, quiet);
    if (*small) return SmallData(c, train_size, small_epochs, seeds, mc_samples);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "dropnet-experiment: %s\n", e.what());
    return 1;
  }
  return 0;
}
