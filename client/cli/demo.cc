#include "client/cli/demo.h"

#include <algorithm>
#include <chrono>
#include <iostream>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "client/cli/output.h"
#include "common/dataio/idx.h"

namespace dropnet::cli {
namespace {

namespace dc = dropnet::client;

const char* kFashionClasses[] = {"T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                                 "Sandal",      "Shirt",   "Sneaker",  "Bag",   "Ankle boot"};

// Row `row` of x as 14 lines of 28 shades; `scale` brings its pixels to 0..1.
std::vector<std::string> Ascii(const dc::Matrix& x, int64_t row, float scale) {
  static const char* kShades = " .:-=+*#%@";
  std::vector<std::string> lines;
  for (int r = 0; r < 28; r += 2) {
    std::string line;
    for (int c = 0; c < 28; ++c) {
      const float v = 0.5f * scale * (x(row, r * 28 + c) + x(row, (r + 1) * 28 + c));
      line += kShades[std::clamp(static_cast<int>(v * 9.99f), 0, 9)];
    }
    lines.push_back(line);
  }
  return lines;
}

// True when the version `m` serves has learned something: an epoch published it, or it came from
// elsewhere (an ONNX import); false for a version as created (random weights).
bool Trained(const v1::ModelInfo& m) {
  for (const auto& d : m.version_details()) {
    if (d.version() == m.version()) return d.has_epoch() || d.note() != "created";
  }
  return m.history_size() > 0;
}

// Polls GetModel until the served version is trained or `wait_seconds` pass; says what it does.
bool WaitForTrainedVersion(dc::Client& c, const std::string& name, double wait_seconds,
                           v1::ModelInfo* info) {
  if (Trained(*info)) return true;
  std::cout << "   Version " << info->version() << " is untrained (random weights): its answers "
            << "and their uncertainty would mean nothing.\n";
  if (wait_seconds > 0) {
    std::cout << "   " << (info->training() ? "Training is under way; waiting" : "Waiting")
              << " up to " << wait_seconds << " s (--wait) for a trained version..." << std::endl;
    const auto until = std::chrono::steady_clock::now() +
                       std::chrono::milliseconds(static_cast<int64_t>(wait_seconds * 1000));
    while (std::chrono::steady_clock::now() < until) {
      std::this_thread::sleep_for(std::chrono::milliseconds(250));
      *info = c.GetModel(name);
      if (Trained(*info)) {
        std::cout << "   Version " << info->version() << " is trained.\n";
        return true;
      }
    }
  }
  std::cout << "\nModel '" << name << "' has no trained version yet"
            << (wait_seconds > 0 ? " (waited " + Fixed(wait_seconds, 0) + " s)" : "") << ". "
            << (info->training() ? "It is training now: run 'dropnet demo' again after its first "
                                   "epoch, or give it longer with --wait SECONDS.\n"
                                 : "Train it, then run 'dropnet demo' again:\n  dropnet train " +
                                       name + " --data DATASET --epochs 1\n");
  return false;
}

}  // namespace

int Demo(dc::Client& c, const std::string& data_dir, double wait_seconds) {
  std::cout << "dropnet demo against " << c.options().target << "\n\n";
  std::cout << "1. health: " << (c.Healthy() ? "SERVING" : "NOT_SERVING") << "\n";
  v1::ModelInfo info;
  try {
    info = c.GetModel("fashion-mlp");
  } catch (const dc::ClientError& e) {
    if (e.code() != grpc::StatusCode::NOT_FOUND) throw;
    std::cout
        << "\nThe example model 'fashion-mlp' is not on this server. Start the server with "
           "--example (scripts/run.sh does) on an empty store, or create it:\n"
           "  dropnet models create fashion-mlp --spec examples/fashion_mlp.json\n"
           "  dropnet data import fashion-mnist-train fashion-mnist/train-images-idx3-ubyte.gz "
           "fashion-mnist/train-labels-idx1-ubyte.gz\n"
           "  dropnet train fashion-mlp --data fashion-mnist-train --epochs 1\n";
    return 1;
  }
  std::cout << "2. model 'fashion-mlp': " << info.spec().description() << ", version "
            << info.version() << ", " << info.history_size() << " epoch(s) trained"
            << (info.training() ? " (training right now: answers come from the newest version)"
                                : "")
            << "\n";
  if (!WaitForTrainedVersion(c, "fashion-mlp", wait_seconds, &info)) return 1;
  const auto test = dataio::LoadIdx(data_dir + "/t10k-images-idx3-ubyte.gz",
                                    data_dir + "/t10k-labels-idx1-ubyte.gz");
  if (test.height != 28 || test.width != 28) {
    throw std::runtime_error("the images in " + data_dir + " are not 28 x 28");
  }
  const int64_t n = std::min<int64_t>(300, test.count);
  if (n < 2) throw std::runtime_error("the demo needs two test images or more in " + data_dir);
  dc::Matrix x(n, 28 * 28);
  // The model's input is what the data set's file held: raw 0..255 pixels, which a model trained
  // on an IDX import scales itself (GetModel's input_scale, 1/255). A model without a recorded
  // scale (trained on pixels scaled beforehand) gets them scaled here.
  const bool raw = info.input_scale() != 0 && info.input_scale() != 1.0f;
  if (raw) {
    const auto* p = reinterpret_cast<const unsigned char*>(test.pixels.data());
    for (int64_t k = 0; k < x.size(); ++k) x.data()[k] = static_cast<float>(p[k]);
  } else {
    dataio::ScalePixels(test, n, x.data());
  }
  dc::UncertaintyOptions o;
  o.samples = 100;
  o.seed = 7;
  auto r = c.PredictUncertainty("fashion-mlp", x, o);
  std::cout << "3. PredictUncertainty on the first " << n << " test images: T = " << r.num_samples()
            << " dropout masks each (seed " << r.seed() << ")\n\n";
  // The confident item has the least predictive entropy; the ambiguous one, another item, the
  // most.
  int64_t confident = 0;
  for (int64_t i = 1; i < n; ++i) {
    if (r.predictive_entropy(i) < r.predictive_entropy(confident)) confident = i;
  }
  int64_t ambiguous = confident == 0 ? 1 : 0;
  for (int64_t i = 0; i < n; ++i) {
    if (i != confident && r.predictive_entropy(i) > r.predictive_entropy(ambiguous)) ambiguous = i;
  }
  dc::Matrix mean = dc::ToMatrix(r.mean()), sd = dc::ToMatrix(r.stddev());
  const float shade = raw ? info.input_scale() : 1.0f;
  auto left = Ascii(x, confident, shade), right = Ascii(x, ambiguous, shade);
  std::cout << "   a confident item (#" << confident << ")           an ambiguous item (#"
            << ambiguous << ")\n";
  for (size_t i = 0; i < left.size(); ++i) {
    std::cout << "   " << left[i] << "    " << right[i] << "\n";
  }
  auto describe = [&](int64_t i) {
    const int k = r.predicted_class(static_cast<int>(i));
    std::ostringstream s;
    s << "true " << kFashionClasses[test.Label(i) % 10] << ", predicted " << kFashionClasses[k]
      << " p=" << Fixed(mean(i, k), 2) << "+-" << Fixed(sd(i, k), 2);
    return s.str();
  };
  std::cout << "\n   #" << confident << ": " << describe(confident) << "\n   #" << ambiguous << ": "
            << describe(ambiguous) << "\n\n";
  Table t;
  t.header = {"   figure", "#" + std::to_string(confident), "#" + std::to_string(ambiguous),
              "what it means"};
  auto add_row = [&](const char* figure, const auto& values, const char* meaning) {
    t.rows.push_back(
        {std::string("   ") + figure, Fixed(values[confident]), Fixed(values[ambiguous]), meaning});
  };
  add_row("predictive entropy", r.predictive_entropy(),
          "total uncertainty of the mean prediction (0 = certain, ln 10 = 2.30 = uniform)");
  add_row("expected entropy", r.expected_entropy(),
          "uncertainty each single pass already has (noise in the data: aleatoric)");
  add_row("mutual information", r.mutual_information(),
          "how much the dropout masks disagree (what the model does not know: epistemic)");
  add_row("variation ratio", r.variation_ratio(),
          "share of passes that voted against the majority class");
  t.Print(std::cout, Format::kTable);
  std::cout << "\nNext: score the whole test set in eval and in Monte-Carlo mode,\n"
               "  dropnet evaluate fashion-mlp --data fashion-mnist-test\n"
               "  dropnet evaluate fashion-mlp --data fashion-mnist-test --mc-samples 50\n"
               "and train a model of your own: README.md, 'A first session'.\n";
  return 0;
}

}  // namespace dropnet::cli
