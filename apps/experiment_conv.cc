#include <chrono>
#include <cstdio>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "apps/experiments.h"
#include "server/engine/data.h"
#include "server/engine/mc.h"
#include "server/engine/metrics.h"
#include "server/engine/network.h"
#include "server/engine/trainer.h"

namespace dropnet::apps {
namespace {

namespace en = dropnet::engine;
using Matrix = en::Matrix;

en::LayerConfig Layer(std::string type, int units = 0, double rate = 0) {
  en::LayerConfig c;
  c.type = std::move(type);
  c.units = units;
  c.rate = rate;
  c.init = "he_uniform";
  return c;
}

en::LayerConfig Conv2d(int filters, int k) {
  en::LayerConfig c = Layer("conv2d");
  c.filters = filters;
  c.kernel_size = k;
  return c;
}

struct RunOptions {
  int epochs = 3;
  int mc_samples = 30;
  uint64_t seed = 1;
  int64_t train_rows = 0;  // 0: all 60000
  bool quiet = false;
};

// Trains with Adam 1e-3, batch 128, printing each epoch; returns seconds per epoch.
double TrainAndReport(en::Network* net, const en::Dataset& train, const RunOptions& ro,
                      int threads) {
  en::TrainOptions o;
  o.epochs = ro.epochs;
  o.batch_size = 128;
  o.optimizer.type = en::OptimizerKind::kAdam;
  o.optimizer.learning_rate = 1e-3;
  o.seed = ro.seed;
  o.threads = threads;
  auto t_epoch = std::chrono::steady_clock::now();
  const auto t0 = t_epoch;
  en::Train(net, en::Task::kClassification, en::LossKind::kCrossEntropy, train, o,
            [&](const en::TrainProgress& p, const en::Network&) {
              if (p.end_of_epoch) {
                const auto now = std::chrono::steady_clock::now();
                std::printf("epoch %d/%d  loss %.4f  train acc %.4f  %.0f samples/s  %.1f s\n",
                            p.epoch, p.epochs, p.loss, p.metric, p.samples_per_second,
                            std::chrono::duration<double>(now - t_epoch).count());
                t_epoch = now;
              } else if (!ro.quiet && p.step % 100 == 0) {
                std::printf("  step %lld/%lld  loss %.4f\n", static_cast<long long>(p.step),
                            static_cast<long long>(p.total_steps), p.loss);
              }
              std::fflush(stdout);
            });
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::printf("training took %.1f s (%.1f s an epoch)\n\n", secs, secs / ro.epochs);
  return secs / ro.epochs;
}

// Mean MC-dropout probabilities over the test set, in batches of 500 rows.
Matrix McMean(const en::Network& net, const Matrix& x, int samples, uint64_t seed, int threads) {
  en::McOptions mo;
  mo.samples = samples;
  mo.seed = seed;
  mo.threads = threads;
  Matrix mean(x.rows(), net.output_shape().Size());
  McPredictBatches(net, x, mo, [&](int64_t r0, const en::McResult& r) {
    mean.middleRows(r0, r.mean.rows()) = r.mean;
  });
  return mean;
}

void PrintRow(const char* name, const en::ClassificationMetrics& m) {
  std::printf("| %s | %.4f | %.4f | %.4f | %.4f |\n", name, m.accuracy, m.nll, m.brier, m.ece);
}

en::Dataset Head(const en::Dataset& d, int64_t rows) {
  if (rows <= 0 || rows >= d.rows()) return d;
  std::vector<int64_t> idx(rows);
  for (int64_t i = 0; i < rows; ++i) idx[i] = i;
  return en::Subset(d, idx);
}

int FashionCnn(const std::string& dir, int threads, const RunOptions& ro) {
  en::Dataset train, test;
  LoadFashion(dir, &train, &test);
  train = Head(train, ro.train_rows);
  en::LayerConfig pool = Layer("max_pool2d");
  pool.pool_size = 2;
  en::NetworkSpec spec;
  spec.input = en::Shape{{1, 28, 28}};
  spec.seed = ro.seed;
  spec.layers = {Conv2d(32, 3),
                 Layer("relu"),
                 Conv2d(64, 3),
                 Layer("relu"),
                 Layer("spatial_dropout2d", 0, 0.1),
                 pool,
                 Layer("flatten"),
                 Layer("dense", 128),
                 Layer("relu"),
                 Layer("dropout", 0, 0.5),
                 Layer("dense", 10)};
  en::Network net(spec);
  std::printf(
      "Fashion-MNIST CNN conv32-conv64 (3x3, ReLU), SpatialDropout2D 0.1, max-pool 2, "
      "dense 128, dropout 0.5; Adam 1e-3, batch 128, %d epochs, %lld training images, "
      "seed %llu, %d threads, %lld parameters\n",
      ro.epochs, static_cast<long long>(train.rows()), static_cast<unsigned long long>(ro.seed),
      threads, static_cast<long long>(net.ParameterCount()));
  TrainAndReport(&net, train, ro, threads);
  const auto t0 = std::chrono::steady_clock::now();
  const Matrix probs =
      en::PredictEval(net, en::Task::kClassification, en::LossKind::kCrossEntropy, test.x, threads);
  const double eval_secs =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::printf("| prediction | accuracy | NLL | Brier | ECE |\n|---|---|---|---|---|\n");
  PrintRow("deterministic (eval)", en::ScoreClassification(probs, test.y));
  double mc_secs = 0;
  if (ro.mc_samples > 0) {
    const auto t1 = std::chrono::steady_clock::now();
    const Matrix mean = McMean(net, test.x, ro.mc_samples, ro.seed, threads);
    mc_secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t1).count();
    const std::string name = "MC dropout, T = " + std::to_string(ro.mc_samples);
    PrintRow(name.c_str(), en::ScoreClassification(mean, test.y));
  }
  std::printf("\neval prediction of %lld images: %.1f s; MC prediction: %.1f s\n",
              static_cast<long long>(test.rows()), eval_secs, mc_secs);
  return 0;
}

int DropConnectMlp(const std::string& dir, int threads, const RunOptions& ro, int units,
                   double rate, bool shared) {
  en::Dataset train, test;
  LoadFashion(dir, &train, &test);
  train = Head(train, ro.train_rows);
  en::LayerConfig dc = Layer("drop_connect", units, rate);
  dc.activation = "relu";
  dc.drop_connect_shared = shared;
  en::NetworkSpec spec;
  spec.input = en::Shape{{1, 28, 28}};
  spec.seed = ro.seed;
  spec.layers = {Layer("flatten"), Layer("dense", units), Layer("relu"), dc, Layer("dense", 10)};
  en::Network net(spec);
  std::printf(
      "Fashion-MNIST MLP 784-%d-%d-10, ReLU, DropConnect %.2f on the second hidden layer "
      "(%s masks); Adam 1e-3, batch 128, %d epochs, seed %llu, %d threads\n",
      units, units, rate, shared ? "batch-shared" : "per-example", ro.epochs,
      static_cast<unsigned long long>(ro.seed), threads);
  TrainAndReport(&net, train, ro, threads);
  // The same parameters with moment-matching inference.
  en::NetworkSpec mm_spec = spec;
  mm_spec.layers[3].moment_matching = true;
  en::Network mm(mm_spec);
  for (int i = 0; i < net.size(); ++i) mm.layer(i).params() = net.layer(i).params();
  std::printf("| prediction | accuracy | NLL | Brier | ECE |\n|---|---|---|---|---|\n");
  PrintRow("mean weights (eval)",
           en::ScoreClassification(en::PredictEval(net, en::Task::kClassification,
                                                   en::LossKind::kCrossEntropy, test.x, threads),
                                   test.y));
  PrintRow("moment matching (Wan et al.)",
           en::ScoreClassification(en::PredictEval(mm, en::Task::kClassification,
                                                   en::LossKind::kCrossEntropy, test.x, threads),
                                   test.y));
  if (ro.mc_samples > 0) {
    const auto t1 = std::chrono::steady_clock::now();
    const Matrix mean = McMean(net, test.x, ro.mc_samples, ro.seed, threads);
    const double secs =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - t1).count();
    const std::string name = "MC DropConnect, T = " + std::to_string(ro.mc_samples);
    PrintRow(name.c_str(), en::ScoreClassification(mean, test.y));
    std::printf("\nMC prediction of %lld images: %.1f s\n", static_cast<long long>(test.rows()),
                secs);
  }
  return 0;
}

void AddRunOptions(CLI::App* a, RunOptions* ro) {
  a->add_option("--epochs", ro->epochs)->capture_default_str()->check(CLI::PositiveNumber);
  a->add_option("--mc-samples", ro->mc_samples, "T for MC (0: skip)")->capture_default_str();
  a->add_option("--seed", ro->seed)->capture_default_str();
  a->add_option("--train-rows", ro->train_rows, "first N training images (0: all)")
      ->capture_default_str();
  a->add_flag("--quiet", ro->quiet, "only per-epoch lines");
}

}  // namespace

void AddConvExperiments(CLI::App* app, const std::string* data_dir, const int* threads) {
  auto cnn = std::make_shared<RunOptions>();
  auto* c = app->add_subcommand("fashion-cnn",
                                "train the CNN with SpatialDropout2D, report deterministic and MC "
                                "figures and seconds per epoch");
  AddRunOptions(c, cnn.get());
  c->callback([=] { Guard([&] { return FashionCnn(*data_dir, *threads, *cnn); }); });

  struct Dc {
    RunOptions run;
    int units = 256;
    double rate = 0.5;
    bool shared = false;
  };
  auto dc = std::make_shared<Dc>();
  auto* d = app->add_subcommand("dropconnect-mlp", "an MLP with DropConnect on Fashion-MNIST");
  AddRunOptions(d, &dc->run);
  d->add_option("--units", dc->units)->capture_default_str()->check(CLI::PositiveNumber);
  d->add_option("--rate", dc->rate)->capture_default_str();
  d->add_flag("--shared", dc->shared, "one weight mask per batch instead of per example");
  d->callback([=] {
    Guard([&] {
      return DropConnectMlp(*data_dir, *threads, dc->run, dc->units, dc->rate, dc->shared);
    });
  });
}

}  // namespace dropnet::apps
