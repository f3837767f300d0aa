// Tests for the conversions between dropnet.v1 messages and the engine: spec validation and its
// messages, limits, batch tensors, checkpoints and the JSON mapping of ModelSpec.
#include "server/service/convert.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <functional>
#include <limits>
#include <string>
#include <utility>
#include <vector>

#include <google/protobuf/util/json_util.h>
#include <google/protobuf/util/message_differencer.h>

#include "server/engine/layer_types.h"
#include "server/engine/mc.h"
#include "server/engine/trainer.h"
#include "server/service/status.h"
#include "tests/testing/spec_json.h"

namespace dropnet::service {
namespace {

using engine::InvalidArgument;
using engine::Matrix;

v1::LayerSpec* AddLayer(v1::ModelSpec* spec, const std::string& type, int units = 0,
                        double rate = 0) {
  auto* l = spec->add_layers();
  l->set_type(type);
  l->set_units(units);
  l->set_rate(rate);
  return l;
}

// input [8] -> dense 16 -> relu -> dropout 0.3 -> dense 3.
v1::ModelSpec ClassifierSpec() {
  return testing::SpecFromJson(R"({"inputShape": [8], "seed": 11, "layers": [
      {"type": "dense", "units": 16}, {"type": "relu"}, {"type": "dropout", "rate": 0.3},
      {"type": "dense", "units": 3}]})");
}

// The message of the InvalidArgument that ToNetworkSpec throws for `spec` ("" when none).
std::string SpecError(const v1::ModelSpec& spec, const SpecLimits& limits = SpecLimits{}) {
  try {
    ToNetworkSpec(spec, limits);
  } catch (const InvalidArgument& e) {
    return e.what();
  }
  return "";
}

bool BitEqual(const Matrix& a, const Matrix& b) {
  return a.rows() == b.rows() && a.cols() == b.cols() &&
         std::memcmp(a.data(), b.data(), sizeof(float) * a.size()) == 0;
}

TEST(ToNetworkSpecTest, AcceptsAValidSpec) {
  const engine::NetworkSpec ns = ToNetworkSpec(ClassifierSpec(), SpecLimits{});
  ASSERT_EQ(ns.layers.size(), 4u);
  EXPECT_EQ(ns.input.Size(), 8);
  EXPECT_EQ(ns.layers[0].units, 16);
  EXPECT_TRUE(ns.layers[0].use_bias);
  EXPECT_DOUBLE_EQ(ns.layers[2].rate, 0.3);
  EXPECT_EQ(ns.seed, 11u);
}

TEST(ToNetworkSpecTest, DropoutRateOutsideTheRangeNamesTheField) {
  for (double rate : {1.0, -0.1, 1.5, std::numeric_limits<double>::quiet_NaN(),
                      std::numeric_limits<double>::infinity()}) {
    v1::ModelSpec spec;
    spec.add_input_shape(4);
    AddLayer(&spec, "dense", 8);
    AddLayer(&spec, "dropout", 0, rate);
    AddLayer(&spec, "dense", 2);
    const std::string msg = SpecError(spec);
    EXPECT_NE(msg.find("spec.layers[1].rate"), std::string::npos) << rate << ": " << msg;
    EXPECT_NE(msg.find("[0, 1)"), std::string::npos) << msg;
  }
  // The boundaries that are allowed.
  for (double rate : {0.0, 0.999}) {
    v1::ModelSpec spec;
    spec.add_input_shape(4);
    AddLayer(&spec, "dropout", 0, rate);
    AddLayer(&spec, "dense", 2);
    EXPECT_EQ(SpecError(spec), "") << rate;
  }
}

TEST(ToNetworkSpecTest, MessagesNameTheField) {
  {
    v1::ModelSpec spec = ClassifierSpec();
    spec.clear_input_shape();
    EXPECT_NE(SpecError(spec).find("spec.input_shape"), std::string::npos);
  }
  {
    v1::ModelSpec spec = ClassifierSpec();
    spec.clear_input_shape();
    for (int d : {1, 2, 3, 4}) spec.add_input_shape(d);
    EXPECT_NE(SpecError(spec).find("spec.input_shape must have 1 to 3"), std::string::npos);
  }
  {
    v1::ModelSpec spec = ClassifierSpec();
    spec.clear_input_shape();
    spec.add_input_shape(2);
    spec.add_input_shape(0);
    const std::string msg = SpecError(spec);
    EXPECT_NE(msg.find("spec.input_shape[1]"), std::string::npos) << msg;
  }
  {
    v1::ModelSpec spec = ClassifierSpec();
    spec.clear_layers();
    EXPECT_NE(SpecError(spec).find("spec.layers"), std::string::npos);
  }
  {
    v1::ModelSpec spec = ClassifierSpec();
    spec.mutable_layers(3)->set_units(0);
    const std::string msg = SpecError(spec);
    EXPECT_NE(msg.find("spec.layers[3].units"), std::string::npos) << msg;
  }
  {
    v1::ModelSpec spec = ClassifierSpec();
    spec.set_tau(-1);
    EXPECT_NE(SpecError(spec).find("spec.tau"), std::string::npos);
    spec.set_tau(std::numeric_limits<double>::quiet_NaN());
    EXPECT_NE(SpecError(spec).find("spec.tau"), std::string::npos);
  }
  {
    v1::ModelSpec spec = ClassifierSpec();
    spec.set_task(static_cast<v1::Task>(42));
    EXPECT_NE(SpecError(spec).find("spec.task"), std::string::npos);
  }
}

TEST(ToNetworkSpecTest, FieldsTheLayerTypeDoesNotReadAreRefused) {
  // A dense layer with a drop rate would be stored and shown as "rate 0.5" while nothing drops.
  {
    v1::ModelSpec spec;
    ASSERT_TRUE(
        google::protobuf::util::JsonStringToMessage(
            R"({"inputShape": [4], "layers": [{"type": "dense", "units": 2, "rate": 0.5}]})", &spec)
            .ok());
    const std::string msg = SpecError(spec);
    EXPECT_NE(msg.find("spec.layers[0] (dense)"), std::string::npos) << msg;
    EXPECT_NE(msg.find("'rate'"), std::string::npos) << msg;
  }
  // Spatial dropout has no classic scaling.
  {
    v1::ModelSpec spec;
    spec.add_input_shape(2);
    spec.add_input_shape(4);
    AddLayer(&spec, "spatial_dropout1d", 0, 0.2)->set_classic_scaling(true);
    AddLayer(&spec, "flatten");
    AddLayer(&spec, "dense", 2);
    const std::string msg = SpecError(spec);
    EXPECT_NE(msg.find("spec.layers[0] (spatial_dropout1d)"), std::string::npos) << msg;
    EXPECT_NE(msg.find("'classic_scaling'"), std::string::npos) << msg;
  }
  // An optional field counts as set when present, even at its default value.
  {
    v1::ModelSpec spec = ClassifierSpec();
    spec.mutable_layers(1)->set_use_bias(true);
    const std::string msg = SpecError(spec);
    EXPECT_NE(msg.find("spec.layers[1] (relu)"), std::string::npos) << msg;
    EXPECT_NE(msg.find("'use_bias'"), std::string::npos) << msg;
  }
  // Every field a type reads is accepted.
  {
    v1::ModelSpec spec = ClassifierSpec();
    spec.mutable_layers(0)->set_use_bias(false);
    spec.mutable_layers(0)->set_init("he_normal");
    spec.mutable_layers(2)->set_classic_scaling(true);
    EXPECT_EQ(SpecError(spec), "");
  }
  // The table names every option that LayerSpec has besides its type.
  const auto* descriptor = v1::LayerSpec::descriptor();
  for (int i = 0; i < descriptor->field_count(); ++i) {
    const std::string name = descriptor->field(i)->name();
    if (name == "type") continue;
    bool read = false;
    for (const engine::LayerType& t : engine::LayerTypes()) read = read || t.Reads(name);
    EXPECT_TRUE(read) << "no layer type reads LayerSpec." << name;
  }
}

TEST(ToNetworkSpecTest, ParameterLimitIsResourceExhausted) {
  SpecLimits limits;
  limits.max_parameters = 100;  // the first dense layer alone has 8 * 16 + 16 = 144
  try {
    ToNetworkSpec(ClassifierSpec(), limits);
    FAIL() << "the parameter limit was not enforced";
  } catch (const ServiceError& e) {
    EXPECT_EQ(e.code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
    EXPECT_NE(std::string(e.what()).find("spec.layers[0]"), std::string::npos) << e.what();
  }
  limits.max_parameters = 144 + 16 * 3 + 3;  // exactly the model
  EXPECT_NO_THROW(ToNetworkSpec(ClassifierSpec(), limits));
  limits.max_parameters -= 1;
  EXPECT_THROW(ToNetworkSpec(ClassifierSpec(), limits), ServiceError);
}

TEST(ToNetworkSpecTest, LayerAndWidthLimitsAreResourceExhausted) {
  SpecLimits limits;
  limits.max_layers = 3;
  try {
    ToNetworkSpec(ClassifierSpec(), limits);
    FAIL() << "the layer limit was not enforced";
  } catch (const ServiceError& e) {
    EXPECT_EQ(e.code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  }
  limits = SpecLimits{};
  limits.max_width = 10;
  try {
    ToNetworkSpec(ClassifierSpec(), limits);  // dense 16 is wider than 10
    FAIL() << "the width limit was not enforced";
  } catch (const ServiceError& e) {
    EXPECT_EQ(e.code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
    EXPECT_NE(std::string(e.what()).find("spec.layers[0].units"), std::string::npos) << e.what();
  }
}

TEST(NewSnapshotTest, BuildsVersionOneAndChecksTheHead) {
  auto snap = NewSnapshot("m", ClassifierSpec(), SpecLimits{});
  EXPECT_EQ(snap->model, "m");
  EXPECT_EQ(snap->version, 1);
  EXPECT_EQ(snap->task, engine::Task::kClassification);
  EXPECT_EQ(snap->loss, engine::LossKind::kCrossEntropy);
  EXPECT_EQ(snap->net.ParameterCount(), 8 * 16 + 16 + 16 * 3 + 3);

  v1::ModelSpec one_output = ClassifierSpec();
  one_output.mutable_layers(3)->set_units(1);
  EXPECT_THROW(NewSnapshot("m", one_output, SpecLimits{}), InvalidArgument);

  v1::ModelSpec regression_ce = ClassifierSpec();
  regression_ce.set_task(v1::TASK_REGRESSION);
  regression_ce.set_loss(v1::LOSS_CROSS_ENTROPY);
  EXPECT_THROW(NewSnapshot("m", regression_ce, SpecLimits{}), InvalidArgument);

  v1::ModelSpec odd_gaussian = ClassifierSpec();
  odd_gaussian.set_task(v1::TASK_REGRESSION);
  odd_gaussian.set_loss(v1::LOSS_GAUSSIAN_NLL);  // 3 outputs cannot be means + log-variances
  EXPECT_THROW(NewSnapshot("m", odd_gaussian, SpecLimits{}), InvalidArgument);

  v1::ModelSpec unknown = ClassifierSpec();
  unknown.mutable_layers(1)->set_type("no_such_layer");
  try {
    NewSnapshot("m", unknown, SpecLimits{});
    FAIL() << "an unknown layer type was accepted";
  } catch (const InvalidArgument& e) {
    EXPECT_NE(std::string(e.what()).find("no_such_layer"), std::string::npos) << e.what();
  }
}

TEST(FromTensorTest, AcceptsBatchShapes) {
  v1::Tensor t;
  t.add_shape(2);
  t.add_shape(1);
  t.add_shape(2);
  t.add_shape(2);
  for (int i = 0; i < 8; ++i) t.add_values(static_cast<float>(i));
  const Matrix m = FromTensor(t, 4, "inputs");
  ASSERT_EQ(m.rows(), 2);
  ASSERT_EQ(m.cols(), 4);
  EXPECT_EQ(m(1, 2), 6.0f);

  v1::Tensor flat;  // [rows] only: the values divide into rows
  flat.add_shape(2);
  for (int i = 0; i < 8; ++i) flat.add_values(static_cast<float>(i));
  EXPECT_EQ(FromTensor(flat, 4, "inputs").cols(), 4);
}

// The message of the InvalidArgument that FromTensor throws ("" when none).
std::string TensorError(const v1::Tensor& t, int64_t row_size) {
  try {
    FromTensor(t, row_size, "inputs");
  } catch (const InvalidArgument& e) {
    return e.what();
  }
  return "";
}

v1::Tensor MakeTensor(std::initializer_list<int64_t> shape, int values) {
  v1::Tensor t;
  for (int64_t d : shape) t.add_shape(d);
  for (int i = 0; i < values; ++i) t.add_values(0.5f * i);
  return t;
}

TEST(FromTensorTest, Errors) {
  EXPECT_NE(TensorError(MakeTensor({}, 0), 4).find("inputs.shape is empty"), std::string::npos);
  EXPECT_NE(TensorError(MakeTensor({0, 4}, 0), 4).find("inputs.shape[0] must be positive"),
            std::string::npos);
  EXPECT_NE(TensorError(MakeTensor({2, -1}, 0), 4).find("inputs.shape[1]"), std::string::npos);
  // Rows of 3 where 4 are expected.
  const std::string width = TensorError(MakeTensor({2, 3}, 6), 4);
  EXPECT_NE(width.find("inputs rows have 3 values"), std::string::npos) << width;
  // A shape of [2, 4] needs 8 values.
  const std::string count = TensorError(MakeTensor({2, 4}, 7), 4);
  EXPECT_NE(count.find("has 7 values"), std::string::npos) << count;
  EXPECT_NE(TensorError(MakeTensor({2, 4}, 9), 4), "");
  EXPECT_EQ(TensorError(MakeTensor({2, 4}, 8), 4), "");
  // Products past 64 bits: dimensions, and rows times the row size.
  const int64_t big = int64_t{1} << 39;
  EXPECT_NE(TensorError(MakeTensor({1, big, big}, 4), 4).find("inputs.shape is too large"),
            std::string::npos);
  const std::string rows = TensorError(MakeTensor({int64_t{1} << 62, 4}, 4), 4);
  EXPECT_NE(rows.find("has 4 values, its shape needs 4611686018427387904 x 4"), std::string::npos)
      << rows;
}

TEST(FromTensorTest, NonFiniteValuesNameRowAndColumn) {
  for (float bad : {std::numeric_limits<float>::quiet_NaN(), std::numeric_limits<float>::infinity(),
                    -std::numeric_limits<float>::infinity()}) {
    v1::Tensor t = MakeTensor({3, 4}, 12);
    t.set_values(2 * 4 + 1, bad);  // row 2, column 1
    const std::string msg = TensorError(t, 4);
    EXPECT_NE(msg.find("row 2, column 1"), std::string::npos) << msg;
    EXPECT_NE(msg.find("non-finite"), std::string::npos) << msg;
  }
}

TEST(FromTensorTest, LargeBatchesAreCopiedAndCheckedEverywhere) {
  // A batch of 37 rows of 784: bad values in the body and in the tail of the copy loop, and the
  // largest finite floats, which are not bad.
  v1::Tensor t = MakeTensor({37, 784}, 37 * 784);
  t.set_values(5, std::numeric_limits<float>::max());
  t.set_values(6, -std::numeric_limits<float>::max());
  const Matrix m = FromTensor(t, 784, "inputs");
  ASSERT_EQ(m.rows(), 37);
  EXPECT_EQ(m(36, 783), 0.5f * (37 * 784 - 1));
  EXPECT_EQ(m(0, 5), std::numeric_limits<float>::max());
  for (int index : {0, 17 * 784 + 300, 37 * 784 - 1}) {
    v1::Tensor bad = t;
    bad.set_values(index, std::numeric_limits<float>::infinity());
    const std::string msg = TensorError(bad, 784);
    EXPECT_NE(
        msg.find("row " + std::to_string(index / 784) + ", column " + std::to_string(index % 784)),
        std::string::npos)
        << msg;
  }
}

TEST(ToTensorTest, MatrixRoundTrip) {
  Matrix m(2, 3);
  m << 1, 2, 3, 4, 5, 6;
  v1::Tensor t;
  ToTensor(m, &t);
  ASSERT_EQ(t.shape_size(), 2);
  EXPECT_EQ(t.shape(0), 2);
  EXPECT_EQ(t.shape(1), 3);
  EXPECT_EQ(t.values(3), 4.0f);  // row-major
  EXPECT_TRUE(BitEqual(FromTensor(t, 3, "t"), m));
}

// A snapshot whose parameters, batch-norm statistics and standardisation are all non-trivial.
std::shared_ptr<Snapshot> TrainedSnapshot() {
  const v1::ModelSpec spec = testing::SpecFromJson(R"({"inputShape": [4], "seed": 3, "layers": [
      {"type": "dense", "units": 12}, {"type": "batch_norm"}, {"type": "relu"},
      {"type": "dropout", "rate": 0.3}, {"type": "dense", "units": 3}]})");
  auto snap = NewSnapshot("roundtrip", spec, SpecLimits{});

  engine::Dataset data;
  data.task = engine::Task::kClassification;
  data.input_shape = engine::Shape{{4}};
  data.x.resize(64, 4);
  data.y.resize(64, 1);
  for (int r = 0; r < 64; ++r) {
    for (int c = 0; c < 4; ++c) data.x(r, c) = std::sin(0.37f * r + 1.3f * c) * (c + 1) + 2.0f;
    data.y(r, 0) = static_cast<float>(r % 3);
  }
  data.num_classes = 3;
  snap->standardizer = engine::Standardizer::Fit(data.x);
  snap->standardizer.Apply(&data.x);
  engine::TrainOptions o;
  o.epochs = 2;
  o.batch_size = 16;
  o.seed = 5;
  engine::Train(&snap->net, snap->task, snap->loss, data, o);
  snap->version = 4;
  snap->steps = 8;
  snap->note = "epoch 2";
  snap->created_unix_ms = 1234;
  v1::EpochRecord rec;
  rec.set_epoch(2);
  rec.set_version(4);
  snap->history.push_back(rec);
  return snap;
}

TEST(CheckpointTest, RoundTripIsBitIdentical) {
  auto before = TrainedSnapshot();
  v1::Checkpoint c;
  ToCheckpoint(*before, &c);
  EXPECT_EQ(c.version(), 4);
  EXPECT_EQ(c.standardization().mean_size(), 4);
  EXPECT_FALSE(c.buffers().empty());  // the batch-norm running statistics
  std::string bytes;
  ASSERT_TRUE(c.SerializeToString(&bytes));
  v1::Checkpoint parsed;
  ASSERT_TRUE(parsed.ParseFromString(bytes));
  auto after = FromCheckpoint(parsed, SpecLimits{});

  EXPECT_EQ(after->model, "roundtrip");
  EXPECT_EQ(after->version, 4);
  EXPECT_EQ(after->steps, 8);
  EXPECT_EQ(after->note, "epoch 2");
  EXPECT_EQ(after->created_unix_ms, 1234);
  ASSERT_EQ(after->history.size(), 1u);
  EXPECT_EQ(after->history[0].version(), 4);
  EXPECT_TRUE(google::protobuf::util::MessageDifferencer::Equals(after->spec, before->spec));

  Matrix x(5, 4);
  for (int r = 0; r < 5; ++r)
    for (int c2 = 0; c2 < 4; ++c2) x(r, c2) = 0.3f * r - 0.7f * c2 + 1.0f;
  Matrix xb = x, xa = x;
  before->standardizer.Apply(&xb);
  after->standardizer.Apply(&xa);
  ASSERT_TRUE(BitEqual(xb, xa));
  const Matrix eval_before = engine::PredictEval(before->net, before->task, before->loss, xb);
  const Matrix eval_after = engine::PredictEval(after->net, after->task, after->loss, xa);
  EXPECT_TRUE(BitEqual(eval_before, eval_after));
  // The untrained model answers differently: the comparison above is not vacuous.
  auto fresh = NewSnapshot("roundtrip", before->spec, SpecLimits{});
  EXPECT_FALSE(
      BitEqual(eval_before, engine::PredictEval(fresh->net, fresh->task, fresh->loss, xb)));

  engine::McOptions mo;
  mo.samples = 20;
  mo.seed = 99;
  const auto mc_before = engine::MonteCarloPredict(before->net, before->task, before->loss, xb, mo);
  const auto mc_after = engine::MonteCarloPredict(after->net, after->task, after->loss, xa, mo);
  EXPECT_TRUE(BitEqual(mc_before.mean, mc_after.mean));
  EXPECT_TRUE(BitEqual(mc_before.stddev, mc_after.stddev));
}

TEST(CheckpointTest, ClassNamesRoundTrip) {
  auto before = NewSnapshot("named", ClassifierSpec(), SpecLimits{});
  before->class_names = {"cat", "dog", "emu"};
  v1::Checkpoint c;
  ToCheckpoint(*before, &c);
  ASSERT_EQ(c.class_names_size(), 3);
  EXPECT_EQ(c.class_names(2), "emu");
  auto after = FromCheckpoint(c, SpecLimits{});
  EXPECT_EQ(after->class_names, before->class_names);
}

TEST(CheckpointTest, TensorsThatDoNotFitTheSpecAreRejected) {
  auto snap = TrainedSnapshot();
  v1::Checkpoint good;
  ToCheckpoint(*snap, &good);

  v1::Checkpoint missing = good;
  missing.mutable_parameters()->RemoveLast();
  EXPECT_THROW(FromCheckpoint(missing, SpecLimits{}), InvalidArgument);

  v1::Checkpoint wrong_shape = good;
  wrong_shape.mutable_parameters(0)->mutable_value()->set_shape(0, 5);
  EXPECT_THROW(FromCheckpoint(wrong_shape, SpecLimits{}), InvalidArgument);

  v1::Checkpoint wrong_name = good;
  wrong_name.mutable_parameters(0)->set_name("nonsense");
  EXPECT_THROW(FromCheckpoint(wrong_name, SpecLimits{}), InvalidArgument);

  v1::Checkpoint wrong_layer = good;
  wrong_layer.mutable_parameters(0)->set_layer(17);
  EXPECT_THROW(FromCheckpoint(wrong_layer, SpecLimits{}), InvalidArgument);

  v1::Checkpoint wrong_standardization = good;
  wrong_standardization.mutable_standardization()->mutable_scale()->RemoveLast();
  EXPECT_THROW(FromCheckpoint(wrong_standardization, SpecLimits{}), InvalidArgument);

  EXPECT_NO_THROW(FromCheckpoint(good, SpecLimits{}));
}

TEST(CheckpointTest, NonFiniteTensorsAndStandardizationAreRejected) {
  auto snap = TrainedSnapshot();
  v1::Checkpoint good;
  ToCheckpoint(*snap, &good);
  ASSERT_GT(good.standardization().scale_size(), 0);

  v1::Checkpoint nan_weight = good;
  nan_weight.mutable_parameters(0)->mutable_value()->set_values(0, std::nanf(""));
  EXPECT_THROW(FromCheckpoint(nan_weight, SpecLimits{}), InvalidArgument);
  for (float scale : {0.0f, -1.0f, std::numeric_limits<float>::infinity()}) {
    v1::Checkpoint bad = good;
    bad.mutable_standardization()->set_scale(0, scale);
    EXPECT_THROW(FromCheckpoint(bad, SpecLimits{}), InvalidArgument) << scale;
  }
  v1::Checkpoint nan_mean = good;
  nan_mean.mutable_standardization()->set_mean(0, std::nanf(""));
  EXPECT_THROW(FromCheckpoint(nan_mean, SpecLimits{}), InvalidArgument);
}

// A stored data set: 3 rows of 2 features, classes 0..2.
v1::StoredDataset SmallStored() {
  engine::Dataset d;
  d.input_shape = engine::Shape{{2}};
  d.x = Matrix::Ones(3, 2);
  d.y.resize(3, 1);
  d.y << 0, 1, 2;
  d.num_classes = 3;
  v1::StoredDataset s;
  ToStored(d, "small", &s);
  return s;
}

TEST(StoredDatasetTest, InconsistentFilesAreRejected) {
  EXPECT_NO_THROW(FromStored(SmallStored()));
  std::vector<std::pair<std::string, std::function<void(v1::StoredDataset*)>>> cases = {
      {"negative input dims",
       [](v1::StoredDataset* s) {
         s->set_input_shape(0, -1);
         for (auto* t : {s->mutable_x(), s->mutable_y()}) {
           t->set_shape(0, -1);
           t->set_shape(1, -1);
           t->mutable_values()->Truncate(1);
         }
       }},
      {"zero rows",
       [](v1::StoredDataset* s) {
         s->mutable_x()->set_shape(0, 0);
         s->mutable_y()->set_shape(0, 0);
         s->mutable_x()->clear_values();
         s->mutable_y()->clear_values();
       }},
      {"shape whose value count overflows to 0",
       [](v1::StoredDataset* s) {
         // 16 rows of 2^60 features: rows x features wraps around to 0 values.
         s->clear_input_shape();
         s->add_input_shape(1 << 30);
         s->add_input_shape(1 << 30);
         s->mutable_x()->set_shape(0, 16);
         s->mutable_x()->set_shape(1, int64_t{1} << 60);
         s->mutable_x()->clear_values();
         s->mutable_y()->set_shape(0, 16);
         s->mutable_y()->clear_values();
         for (int i = 0; i < 16; ++i) s->mutable_y()->add_values(0);
       }},
      {"unknown task", [](v1::StoredDataset* s) { s->set_task(static_cast<v1::Task>(9)); }},
      {"NaN feature", [](v1::StoredDataset* s) { s->mutable_x()->set_values(3, std::nanf("")); }},
      {"label past num_classes", [](v1::StoredDataset* s) { s->mutable_y()->set_values(2, 3); }},
      {"negative label", [](v1::StoredDataset* s) { s->mutable_y()->set_values(0, -1); }},
      {"fractional label", [](v1::StoredDataset* s) { s->mutable_y()->set_values(1, 0.5f); }},
      {"num_classes too small", [](v1::StoredDataset* s) { s->set_num_classes(2); }},
  };
  for (const auto& [name, mutate] : cases) {
    v1::StoredDataset s = SmallStored();
    mutate(&s);
    EXPECT_THROW(FromStored(s), InvalidArgument) << name;
  }
}

TEST(ModelSpecJsonTest, JsonMappingParsesCamelCaseFields) {
  constexpr const char* kJson = R"json({
    "inputShape": [1, 2, 4],
    "task": "TASK_REGRESSION",
    "loss": "LOSS_MSE",
    "seed": "9",
    "tau": 4.5,
    "description": "json spec",
    "layers": [
      {"type": "flatten"},
      {"type": "dense", "units": 16, "init": "he_uniform", "useBias": false},
      {"type": "leaky_relu", "negativeSlope": 0.2},
      {"type": "dropout", "rate": 0.3, "classicScaling": true},
      {"type": "dense", "units": 2}
    ]
  })json";
  v1::ModelSpec spec;
  const auto status = google::protobuf::util::JsonStringToMessage(kJson, &spec);
  ASSERT_TRUE(status.ok()) << status.ToString();
  ASSERT_EQ(spec.input_shape_size(), 3);
  EXPECT_EQ(spec.input_shape(2), 4);
  EXPECT_EQ(spec.task(), v1::TASK_REGRESSION);
  EXPECT_EQ(spec.loss(), v1::LOSS_MSE);
  EXPECT_EQ(spec.seed(), 9u);
  EXPECT_DOUBLE_EQ(spec.tau(), 4.5);
  ASSERT_EQ(spec.layers_size(), 5);
  EXPECT_TRUE(spec.layers(1).has_use_bias());
  EXPECT_FALSE(spec.layers(1).use_bias());
  EXPECT_DOUBLE_EQ(spec.layers(2).negative_slope(), 0.2);
  EXPECT_TRUE(spec.layers(3).classic_scaling());

  auto snap = NewSnapshot("json", spec, SpecLimits{});
  EXPECT_EQ(snap->task, engine::Task::kRegression);
  EXPECT_DOUBLE_EQ(snap->tau, 4.5);
  EXPECT_EQ(snap->net.ParameterCount(), 8 * 16 + 16 * 2 + 2);  // no bias on the first layer
  EXPECT_EQ(snap->net.output_shape().Size(), 2);

  // And back: the JSON printer uses the same camelCase names.
  std::string json;
  ASSERT_TRUE(google::protobuf::util::MessageToJsonString(spec, &json).ok());
  EXPECT_NE(json.find("\"inputShape\""), std::string::npos) << json;
  v1::ModelSpec again;
  ASSERT_TRUE(google::protobuf::util::JsonStringToMessage(json, &again).ok());
  EXPECT_TRUE(google::protobuf::util::MessageDifferencer::Equals(spec, again));
}

TEST(ModelSpecJsonTest, UnknownFieldsAndBadValuesAreRejected) {
  v1::ModelSpec spec;
  EXPECT_FALSE(
      google::protobuf::util::JsonStringToMessage(R"({"inputShape": [4], "layerz": []})", &spec)
          .ok());
  EXPECT_FALSE(google::protobuf::util::JsonStringToMessage(
                   R"({"inputShape": [4], "task": "TASK_NOPE"})", &spec)
                   .ok());
  // A parsed spec still goes through validation.
  ASSERT_TRUE(google::protobuf::util::JsonStringToMessage(
                  R"({"inputShape": [4], "layers": [{"type": "dropout", "rate": 1.0},
                      {"type": "dense", "units": 2}]})",
                  &spec)
                  .ok());
  EXPECT_NE(SpecError(spec).find("spec.layers[0].rate"), std::string::npos);
}

}  // namespace
}  // namespace dropnet::service
