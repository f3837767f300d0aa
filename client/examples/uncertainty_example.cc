// A minimal consumer of the dropnet client library: creates a small regression model, uploads
// noisy samples of y = sin(3x) on [-1, 1], trains it, and asks how sure it is inside and outside
// the range it saw. Usage: uncertainty_example [host:port]
#include <cmath>
#include <cstdio>

#include "dropnet/client.h"

namespace v1 = dropnet::v1;
using dropnet::client::Matrix;

int main(int argc, char** argv) {
  dropnet::client::ClientOptions options;
  if (argc > 1) options.target = argv[1];
  dropnet::client::Client client(options);
  try {
    if (!client.Healthy()) {
      std::fprintf(stderr, "server at %s is not serving\n", options.target.c_str());
      return 1;
    }
    v1::ModelSpec spec;
    spec.add_input_shape(1);
    spec.set_task(v1::TASK_REGRESSION);
    spec.set_tau(100.0);  // observation noise sd 0.1
    spec.set_seed(3);
    for (int i = 0; i < 2; ++i) {
      auto* d = spec.add_layers();
      d->set_type("dense");
      d->set_units(64);
      d->set_init("he_uniform");
      spec.add_layers()->set_type("relu");
      auto* drop = spec.add_layers();
      drop->set_type("dropout");
      drop->set_rate(0.1);
    }
    auto* out = spec.add_layers();
    out->set_type("dense");
    out->set_units(1);
    const std::string name = "sine-example";
    try {
      client.DeleteModel(name);
    } catch (const dropnet::client::ClientError&) {
    }
    client.CreateModel(name, spec);

    const int n = 512;
    Matrix x(n, 1), y(n, 1);
    for (int i = 0; i < n; ++i) {
      x(i, 0) = -1.0f + 2.0f * static_cast<float>(i) / (n - 1);
      y(i, 0) = std::sin(3.0f * x(i, 0)) + 0.1f * std::sin(97.0f * static_cast<float>(i));
    }
    v1::DatasetHeader header;
    header.set_name(name);
    header.set_task(v1::TASK_REGRESSION);
    header.add_input_shape(1);
    header.set_overwrite(true);
    client.UploadRows(header, x, y);

    v1::TrainRequest train;
    train.set_model(name);
    train.set_dataset(name);
    train.set_epochs(60);
    train.set_batch_size(32);
    train.set_learning_rate(3e-3);
    auto last = client.Train(train, {});
    std::printf("trained to version %lld, training rmse %.3f\n",
                static_cast<long long>(last.version()), last.metric());

    Matrix probe(3, 1);
    probe << 0.0f, 0.9f, 3.0f;
    dropnet::client::UncertaintyOptions mc;
    mc.samples = 200;
    mc.seed = 1;
    auto r = client.PredictUncertainty(name, probe, mc);
    Matrix mean = dropnet::client::ToMatrix(r.mean());
    Matrix sd = dropnet::client::ToMatrix(r.stddev());
    for (int i = 0; i < 3; ++i) {
      std::printf("x = %4.1f  mean %+.3f  sd %.3f  (true %+.3f)\n", probe(i, 0), mean(i, 0),
                  sd(i, 0), std::sin(3.0f * probe(i, 0)));
    }
    client.DeleteModel(name);
    client.DeleteDataset(name);
    // Far outside the training range the masks disagree more than inside it.
    return sd(2, 0) > sd(0, 0) ? 0 : 3;
  } catch (const dropnet::client::ClientError& e) {
    std::fprintf(stderr, "%s: %s\n", e.code_name(), e.what());
    return 2;
  }
}
