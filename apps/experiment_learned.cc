#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <memory>
#include <vector>

#include "apps/experiments.h"
#include "server/engine/data.h"
#include "server/engine/mc.h"
#include "server/engine/metrics.h"
#include "server/engine/network.h"
#include "server/engine/trainer.h"

namespace dropnet::apps {
namespace en = dropnet::engine;
namespace {

using Matrix = en::Matrix;

en::LayerConfig Layer(const std::string& type, int units = 0) {
  en::LayerConfig c;
  c.type = type;
  c.units = units;
  return c;
}

double Accuracy(const Matrix& probs, const Matrix& labels) {
  return en::ScoreClassification(probs, labels).accuracy;
}

// ---- concrete-rates ----

// y = sin(2 x0) + x1 x2 + 0.5 x3 + N(0, 0.3^2), x ~ U(-1, 1)^8: five features are noise.
en::Dataset SyntheticRegression(int64_t n, uint64_t seed) {
  en::SplitMix64 rng(seed);
  en::Dataset d;
  d.task = en::Task::kRegression;
  d.input_shape = en::Shape{{8}};
  d.x.resize(n, 8);
  d.y.resize(n, 1);
  for (int64_t r = 0; r < n; ++r) {
    for (int j = 0; j < 8; ++j) d.x(r, j) = static_cast<float>(2 * rng.Uniform() - 1);
    d.y(r, 0) = static_cast<float>(std::sin(2 * d.x(r, 0)) + d.x(r, 1) * d.x(r, 2) +
                                   0.5 * d.x(r, 3) + 0.3 * rng.Normal());
  }
  return d;
}

int ConcreteRates(const std::string&, int threads, std::vector<int> sizes, int64_t steps, int seeds,
                  int units) {
  const en::Dataset test = SyntheticRegression(5000, 999);
  std::printf(
      "Concrete dropout (Gal, Hron & Kendall 2017) on y = sin(2 x0) + x1 x2 + 0.5 x3 + "
      "N(0, 0.3^2), x ~ U(-1,1)^8.\nNetwork 8 -[CD]- %d -relu-[CD]- %d -relu-[CD]- 1, "
      "temperature 0.1, init p 0.1, weight_reg = 1e-8/N, dropout_reg = 2/N; Adam 1e-3, "
      "batch 32, about %lld steps whatever N; mean of %d seeds.\n\n",
      units, units, static_cast<long long>(steps), seeds);
  std::printf(
      "| N (training rows) | p layer 1 (input) | p layer 2 | p layer 3 | mean p | test RMSE "
      "(eval) | seconds |\n|---|---|---|---|---|---|---|\n");
  for (int n : sizes) {
    double p[3] = {0, 0, 0}, rmse = 0;
    const auto t0 = std::chrono::steady_clock::now();
    for (int s = 1; s <= seeds; ++s) {
      const en::Dataset train = SyntheticRegression(n, 1000 + s);
      en::NetworkSpec spec;
      spec.input = en::Shape{{8}};
      spec.seed = s;
      auto cd = [](int u) {
        en::LayerConfig c = Layer("concrete_dropout", u);
        c.init = "he_uniform";
        return c;
      };
      spec.layers = {cd(units), Layer("relu"), cd(units), Layer("relu"), cd(1)};
      en::Network net(spec);
      en::TrainOptions o;
      o.batch_size = 32;
      const int64_t per_epoch = (n + o.batch_size - 1) / o.batch_size;
      o.epochs = static_cast<int>((steps + per_epoch - 1) / per_epoch);
      o.seed = s;
      o.threads = threads;
      en::Train(&net, en::Task::kRegression, en::LossKind::kMse, train, o);
      int k = 0;
      for (int i = 0; i < net.size(); ++i) {
        const auto r = net.layer(i).LearnedRates();
        if (!r.empty()) p[k++] += r[0] / seeds;
      }
      const Matrix pred =
          en::PredictEval(net, en::Task::kRegression, en::LossKind::kMse, test.x, threads);
      rmse += std::sqrt((pred - test.y).cast<double>().squaredNorm() / test.rows()) / seeds;
    }
    std::printf("| %d | %.4f | %.4f | %.4f | %.4f | %.4f | %.1f |\n", n, p[0], p[1], p[2],
                (p[0] + p[1] + p[2]) / 3, rmse, Seconds(t0));
    std::fflush(stdout);
  }
  return 0;
}

// ---- sparse-vd ----

en::NetworkSpec Mlp(const std::string& dense, double p, uint64_t seed, double log_sigma2) {
  en::NetworkSpec spec;
  spec.input = en::Shape{{1, 28, 28}};
  spec.seed = seed;
  auto d = [&](int units) {
    en::LayerConfig c = Layer(dense, units);
    c.init = "he_uniform";
    c.log_sigma2_init = log_sigma2;
    return c;
  };
  en::LayerConfig drop = Layer("dropout");
  drop.rate = p;
  spec.layers = {Layer("flatten"), d(512), Layer("relu")};
  if (p > 0) spec.layers.push_back(drop);
  spec.layers.push_back(d(512));
  spec.layers.push_back(Layer("relu"));
  if (p > 0) spec.layers.push_back(drop);
  spec.layers.push_back(d(10));
  return spec;
}

int SparseVd(const std::string& dir, int threads, int epochs, int baseline_epochs, double lr,
             double log_sigma2, bool pretrained, uint64_t seed) {
  en::Dataset train, test;
  LoadFashion(dir, &train, &test);
  en::TrainOptions o;
  o.batch_size = 128;
  o.optimizer.learning_rate = 1e-3;
  o.seed = seed;
  o.threads = threads;
  std::printf(
      "Sparse variational dropout (Molchanov et al. 2017) on the Fashion-MNIST MLP "
      "784-512-512-10; batch 128, seed %llu, %d threads.\n",
      static_cast<unsigned long long>(seed), threads);
  // The plain dropout MLP (p = 0.5), the reference, and the starting point when pretrained.
  en::Network base(Mlp("dense", 0.5, seed, 0));
  o.epochs = baseline_epochs;
  auto t0 = std::chrono::steady_clock::now();
  en::Train(&base, en::Task::kClassification, en::LossKind::kCrossEntropy, train, o);
  const double base_secs = Seconds(t0);
  const Matrix base_probs = en::PredictEval(base, en::Task::kClassification,
                                            en::LossKind::kCrossEntropy, test.x, threads);
  const double base_acc = Accuracy(base_probs, test.y);
  std::printf("plain dropout MLP: %d epochs of Adam 1e-3, %.1f s, test accuracy %.4f\n",
              baseline_epochs, base_secs, base_acc);

  en::Network net(Mlp("sparse_vd", 0, seed, log_sigma2));
  if (pretrained) {  // Molchanov et al. start from a trained network
    const int from[3] = {1, 4, 7}, to[3] = {1, 3, 5};
    for (int k = 0; k < 3; ++k) {
      net.layer(to[k]).params()[0].value = base.layer(from[k]).params()[0].value;
      net.layer(to[k]).params()[2].value = base.layer(from[k]).params()[1].value;
    }
  }
  o.epochs = epochs;
  o.optimizer.learning_rate = lr;
  std::printf(
      "sparse VD MLP: %s, log sigma^2 init %.1f, Adam %g, %d epochs, KL / N with N = "
      "%lld\n\n| epoch | train loss (incl. KL/N) | test acc (pruned) | sparsity |\n"
      "|---|---|---|---|\n",
      pretrained ? "from the plain MLP's weights" : "from scratch", log_sigma2, lr, epochs,
      static_cast<long long>(train.rows()));
  t0 = std::chrono::steady_clock::now();
  auto total_sparsity = [](const en::Network& n) {
    double pruned = 0, total = 0;
    for (int i = 0; i < n.size(); ++i) {
      const double s = n.layer(i).Sparsity();
      if (s < 0) continue;
      const double w = static_cast<double>(n.layer(i).params()[0].value.size());
      pruned += s * w;
      total += w;
    }
    return pruned / total;
  };
  en::Train(&net, en::Task::kClassification, en::LossKind::kCrossEntropy, train, o,
            [&](const en::TrainProgress& p, const en::Network& n) {
              if (!p.end_of_epoch) return;
              const Matrix pr = en::PredictEval(n, en::Task::kClassification,
                                                en::LossKind::kCrossEntropy, test.x, threads);
              std::printf("| %d | %.4f | %.4f | %.4f |\n", p.epoch, p.loss, Accuracy(pr, test.y),
                          total_sparsity(n));
              std::fflush(stdout);
            });
  const double secs = Seconds(t0);
  const Matrix probs =
      en::PredictEval(net, en::Task::kClassification, en::LossKind::kCrossEntropy, test.x, threads);
  const double acc = Accuracy(probs, test.y);
  std::printf("\nsparse VD training took %.1f s (%.1f s an epoch)\n\n", secs, secs / epochs);
  std::printf("| model | test accuracy | weights kept / total | sparsity |\n|---|---|---|---|\n");
  int64_t base_w = 0;
  for (int i = 0; i < base.size(); ++i)
    if (base.layer(i).Type() == "dense") base_w += base.layer(i).params()[0].value.size();
  std::printf("| plain dropout MLP (p = 0.5) | %.4f | %lld / %lld | 0 |\n", base_acc,
              static_cast<long long>(base_w), static_cast<long long>(base_w));
  const double sp = total_sparsity(net);
  std::printf("| sparse VD MLP (log alpha > 3 pruned) | %.4f | %lld / %lld | %.4f |\n", acc,
              static_cast<long long>(std::llround((1 - sp) * base_w)),
              static_cast<long long>(base_w), sp);
  std::printf("\nper layer sparsity:");
  for (int i = 0; i < net.size(); ++i)
    if (net.layer(i).Sparsity() >= 0) std::printf(" layer %d: %.4f", i, net.layer(i).Sparsity());
  std::printf("\naccuracy change vs the plain dropout MLP: %+.2f points\n", 100 * (acc - base_acc));
  return 0;
}

// ---- fashion-lstm ----

struct RnnOptions {
  std::string cell = "lstm";
  int units = 128, epochs = 3, mc_samples = 20;
  double zoneout_cell = 0.1, zoneout_hidden = 0.1, rate = 0.0, recurrent_rate = 0.0;
  uint64_t seed = 1;
};

int FashionRnn(const std::string& dir, int threads, const RnnOptions& ro) {
  en::Dataset train, test;
  LoadFashion(dir, &train, &test);
  en::NetworkSpec spec;
  spec.input = en::Shape{{28, 28}};  // 28 steps of one image row (28 pixels)
  spec.seed = ro.seed;
  en::LayerConfig r = Layer(ro.cell, ro.units);
  r.zoneout_cell = ro.cell == "lstm" ? ro.zoneout_cell : 0.0;
  r.zoneout_hidden = ro.zoneout_hidden;
  r.rate = ro.rate;
  r.recurrent_rate = ro.recurrent_rate;
  spec.layers = {r, Layer("dense", 10)};
  en::Network net(spec);
  en::TrainOptions o;
  o.epochs = ro.epochs;
  o.batch_size = 128;
  o.optimizer.learning_rate = 1e-3;
  o.seed = ro.seed;
  o.threads = threads;
  std::printf(
      "Fashion-MNIST row by row (28 steps x 28 pixels): %s(%d) + Dense(10), zoneout "
      "cell %.2f hidden %.2f, variational input %.2f recurrent %.2f; Adam 1e-3, batch 128, "
      "%d epochs, seed %llu, %d threads, %lld parameters\n",
      ro.cell.c_str(), ro.units, r.zoneout_cell, r.zoneout_hidden, ro.rate, ro.recurrent_rate,
      ro.epochs, static_cast<unsigned long long>(ro.seed), threads,
      static_cast<long long>(net.ParameterCount()));
  double train_secs = 0;
  auto t_epoch = std::chrono::steady_clock::now();
  en::Train(&net, en::Task::kClassification, en::LossKind::kCrossEntropy, train, o,
            [&](const en::TrainProgress& p, const en::Network&) {
              if (!p.end_of_epoch) return;
              const double s = Seconds(t_epoch);
              train_secs += s;
              std::printf("epoch %d/%d  loss %.4f  train acc %.4f  %.1f s\n", p.epoch, p.epochs,
                          p.loss, p.metric, s);
              std::fflush(stdout);
              t_epoch = std::chrono::steady_clock::now();
            });
  std::printf("training took %.1f s (%.1f s an epoch)\n\n", train_secs, train_secs / ro.epochs);
  const Matrix probs =
      en::PredictEval(net, en::Task::kClassification, en::LossKind::kCrossEntropy, test.x, threads);
  const auto det = en::ScoreClassification(probs, test.y);
  std::printf("| prediction | accuracy | NLL | Brier | ECE |\n|---|---|---|---|---|\n");
  std::printf("| deterministic (eval: zoneout expectation) | %.4f | %.4f | %.4f | %.4f |\n",
              det.accuracy, det.nll, det.brier, det.ece);
  if (ro.mc_samples <= 0 || !net.layer(0).IsStochastic()) return 0;
  en::McOptions mo;
  mo.samples = ro.mc_samples;
  mo.seed = ro.seed;
  mo.threads = threads;
  mo.memory_budget_bytes = 256ll << 20;
  Matrix mean(test.rows(), 10);
  Eigen::VectorXd mi(test.rows()), entropy(test.rows());
  const auto t0 = std::chrono::steady_clock::now();
  McPredictBatches(net, test.x, mo, [&](int64_t r0, const en::McResult& res) {
    const int64_t n = res.mean.rows();
    mean.middleRows(r0, n) = res.mean;
    mi.segment(r0, n) = res.mutual_information.cast<double>();
    entropy.segment(r0, n) = res.predictive_entropy.cast<double>();
  });
  const double mc_secs = Seconds(t0);
  const auto mc = en::ScoreClassification(mean, test.y);
  std::printf("| MC over the zoneout/variational masks, T = %d | %.4f | %.4f | %.4f | %.4f |\n",
              ro.mc_samples, mc.accuracy, mc.nll, mc.brier, mc.ece);
  // Uncertainty where the model is right vs wrong.
  double sums[2][2] = {{0, 0}, {0, 0}};
  int64_t counts[2] = {0, 0};
  std::vector<std::pair<double, int>> ranked;
  for (int64_t r = 0; r < test.rows(); ++r) {
    Eigen::Index arg;
    mean.row(r).maxCoeff(&arg);
    const int wrong = arg != static_cast<Eigen::Index>(test.y(r, 0));
    sums[wrong][0] += entropy(r);
    sums[wrong][1] += mi(r);
    ++counts[wrong];
    ranked.push_back({mi(r), wrong});
  }
  // AUROC of the mutual information as a detector of errors (Mann-Whitney).
  std::sort(ranked.begin(), ranked.end());
  double rank_sum = 0;
  for (size_t i = 0; i < ranked.size(); ++i)
    if (ranked[i].second) rank_sum += static_cast<double>(i + 1);
  const double n1 = static_cast<double>(counts[1]), n0 = static_cast<double>(counts[0]);
  const double auroc = n1 > 0 && n0 > 0 ? (rank_sum - n1 * (n1 + 1) / 2) / (n1 * n0) : NAN;
  std::printf(
      "\n| test images | count | mean predictive entropy | mean mutual information "
      "(BALD) |\n|---|---|---|---|\n");
  std::printf("| correct | %lld | %.4f | %.4f |\n| wrong | %lld | %.4f | %.4f |\n",
              static_cast<long long>(counts[0]), sums[0][0] / std::max(n0, 1.0),
              sums[0][1] / std::max(n0, 1.0), static_cast<long long>(counts[1]),
              sums[1][0] / std::max(n1, 1.0), sums[1][1] / std::max(n1, 1.0));
  std::printf(
      "\nAUROC of the mutual information for spotting errors: %.4f; MC prediction of "
      "10000 images took %.1f s\n",
      auroc, mc_secs);
  return 0;
}

}  // namespace

void AddLearnedRateExperiments(CLI::App* app, const std::string* data_dir, const int* threads) {
  struct Concrete {
    std::vector<int> sizes = {100, 10000};
    int64_t steps = 6000;
    int seeds = 3, units = 64;
  };
  auto cr = std::make_shared<Concrete>();
  auto* c = app->add_subcommand("concrete-rates",
                                "concrete dropout: learned rates for small vs large training sets");
  c->add_option("--sizes", cr->sizes, "training-set sizes")->capture_default_str();
  c->add_option("--steps", cr->steps, "training steps per run")->capture_default_str();
  c->add_option("--seeds", cr->seeds)->capture_default_str()->check(CLI::PositiveNumber);
  c->add_option("--units", cr->units)->capture_default_str()->check(CLI::PositiveNumber);
  c->callback([=] {
    Guard([&] {
      return ConcreteRates(*data_dir, *threads, cr->sizes, cr->steps, cr->seeds, cr->units);
    });
  });

  struct Svd {
    int epochs = 8, baseline_epochs = 3;
    double lr = 1e-3, log_sigma2 = -6;  // the paper's -10 needs many more epochs to prune
    bool scratch = false;
    uint64_t seed = 1;
  };
  auto sv = std::make_shared<Svd>();
  auto* s = app->add_subcommand("sparse-vd",
                                "sparse variational dropout on the Fashion-MNIST MLP: sparsity "
                                "and accuracy vs the plain dropout MLP");
  s->add_option("--epochs", sv->epochs, "sparse VD epochs")->capture_default_str();
  s->add_option("--baseline-epochs", sv->baseline_epochs)->capture_default_str();
  s->add_option("--lr", sv->lr, "sparse VD Adam learning rate")->capture_default_str();
  s->add_option("--log-sigma2-init", sv->log_sigma2)->capture_default_str();
  s->add_flag("--from-scratch", sv->scratch, "do not start from the plain MLP's weights");
  s->add_option("--seed", sv->seed)->capture_default_str();
  s->callback([=] {
    Guard([&] {
      return SparseVd(*data_dir, *threads, sv->epochs, sv->baseline_epochs, sv->lr, sv->log_sigma2,
                      !sv->scratch, sv->seed);
    });
  });

  auto ro = std::make_shared<RnnOptions>();
  auto* f = app->add_subcommand("fashion-lstm",
                                "LSTM/GRU with zoneout reading Fashion-MNIST row by row, with MC "
                                "dropout uncertainty");
  f->add_option("--cell", ro->cell)->capture_default_str()->check(CLI::IsMember({"lstm", "gru"}));
  f->add_option("--units", ro->units)->capture_default_str()->check(CLI::PositiveNumber);
  f->add_option("--epochs", ro->epochs)->capture_default_str()->check(CLI::PositiveNumber);
  f->add_option("--zoneout-cell", ro->zoneout_cell)->capture_default_str();
  f->add_option("--zoneout-hidden", ro->zoneout_hidden)->capture_default_str();
  f->add_option("--rate", ro->rate, "variational input dropout")->capture_default_str();
  f->add_option("--recurrent-rate", ro->recurrent_rate, "variational recurrent dropout")
      ->capture_default_str();
  f->add_option("--mc-samples", ro->mc_samples, "T for MC dropout (0: skip)")
      ->capture_default_str();
  f->add_option("--seed", ro->seed)->capture_default_str();
  f->callback([=] { Guard([&] { return FashionRnn(*data_dir, *threads, *ro); }); });
}

}  // namespace dropnet::apps
