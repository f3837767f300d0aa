// In-process tests of the error codes of the dropnet.v1.Dropnet contract: unknown and duplicate
// names, invalid specs and inputs, sample and batch limits, oversize messages, busy models, data
// roots, read-only replicas and data sets that do not fit a model.
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <future>
#include <limits>
#include <memory>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <spdlog/sinks/ostream_sink.h>
#include <spdlog/spdlog.h>

#include "tests/service/service_fixture.h"

namespace dropnet::service {
namespace {

namespace fs = std::filesystem;
using grpc::StatusCode;

// ---- Error codes ----

TEST_F(ServiceTest, UnknownModelOrDatasetIsNotFound) {
  StartServer();
  ASSERT_OK(CreateModel("m", ClassifierSpec()));
  ASSERT_OK(UploadRows("d", ClassificationData(20, 4, 1)));
  const v1::Tensor x = Batch({0, 0, 0, 0}, {1, 4});
  EXPECT_CODE(LookUpModel("nope"), StatusCode::NOT_FOUND);
  EXPECT_CODE(DeleteModel("nope"), StatusCode::NOT_FOUND);
  EXPECT_CODE(DeleteDataset("nope"), StatusCode::NOT_FOUND);
  v1::PredictResponse pr;
  EXPECT_CODE(Predict("nope", x, &pr), StatusCode::NOT_FOUND);
  v1::PredictUncertaintyResponse ur;
  EXPECT_CODE(Uncertainty(UncertaintyRequest("nope", x, 5, 1), &ur), StatusCode::NOT_FOUND);
  EXPECT_CODE(Train(TrainRequest("nope", "d", 1)), StatusCode::NOT_FOUND);
  EXPECT_CODE(Train(TrainRequest("m", "nope", 1)), StatusCode::NOT_FOUND);
  v1::EvaluateRequest ev;
  ev.set_model("nope");
  ev.set_dataset("d");
  v1::EvaluateResponse er;
  EXPECT_CODE(Evaluate(ev, &er), StatusCode::NOT_FOUND);
  ev.set_model("m");
  ev.set_dataset("nope");
  EXPECT_CODE(Evaluate(ev, &er), StatusCode::NOT_FOUND);
  v1::ImportDatasetRequest imp;
  imp.set_name("x");
  imp.set_path("missing.csv");
  EXPECT_CODE(ImportDataset(imp), StatusCode::NOT_FOUND);
}

TEST_F(ServiceTest, DuplicateModelNameIsAlreadyExists) {
  StartServer();
  ASSERT_OK(CreateModel("dup", ClassifierSpec()));
  const grpc::Status s = CreateModel("dup", ClassifierSpec(8));
  EXPECT_CODE(s, StatusCode::ALREADY_EXISTS);
  EXPECT_NE(s.error_message().find("dup"), std::string::npos) << s.error_message();
  EXPECT_EQ(GetModel("dup").spec().input_shape(0), 4);  // the first one is untouched
}

TEST_F(ServiceTest, BadNamesAreInvalidArgument) {
  StartServer();
  for (const std::string& name :
       {std::string(), std::string("../x"), std::string(65, 'a'), std::string(".hidden"),
        std::string("a/b"), std::string("white space"), std::string("-dash")}) {
    const grpc::Status s = CreateModel(name, ClassifierSpec());
    EXPECT_CODE(s, StatusCode::INVALID_ARGUMENT);
    EXPECT_NE(s.error_message().find("name"), std::string::npos) << s.error_message();
    EXPECT_CODE(UploadRows(name, ClassificationData(4, 4, 1)), StatusCode::INVALID_ARGUMENT);
    v1::ImportDatasetRequest imp;
    imp.set_name(name);
    imp.set_path("a.csv");
    EXPECT_CODE(ImportDataset(imp), StatusCode::INVALID_ARGUMENT);
  }
  EXPECT_TRUE(ListModels().empty());
  EXPECT_TRUE(ListDatasets().empty());
  EXPECT_FALSE(fs::exists(dir_.path() / "x"));
  EXPECT_FALSE(fs::exists(dir_.path() / "store" / "x"));
  // The longest allowed name and the allowed punctuation.
  ASSERT_OK(CreateModel(std::string(64, 'b'), ClassifierSpec()));
  ASSERT_OK(CreateModel("v1.2_final-B", ClassifierSpec()));
}

TEST_F(ServiceTest, NamesAreBoundedAndEscapedWhereEchoedOrLogged) {
  StartServer();
  // The server's call log at info level (the fixture's logging is off), captured.
  std::ostringstream logged;
  auto sink = std::make_shared<spdlog::sinks::ostream_sink_mt>(logged);
  auto rpc_log = spdlog::get("rpc");
  ASSERT_NE(rpc_log, nullptr);
  rpc_log->sinks().push_back(sink);
  const spdlog::level::level_enum level = rpc_log->level();
  rpc_log->set_level(spdlog::level::info);
  // A megabyte-long name: the error stays short (within gRPC's metadata limit) and says which
  // field it is about.
  const std::string huge(1 << 20, 'n');
  const grpc::Status s = CreateModel(huge + "/", ClassifierSpec());
  EXPECT_CODE(s, StatusCode::INVALID_ARGUMENT);
  EXPECT_LT(s.error_message().size(), 300u) << s.error_message().size();
  EXPECT_NE(s.error_message().find(std::string(64, 'n') + "..."), std::string::npos);
  // GetModel and DeleteDataset write their log line before they answer, so the lines are there
  // to look at below.
  const grpc::Status missing = LookUpModel(huge);
  EXPECT_CODE(missing, StatusCode::NOT_FOUND);
  EXPECT_LT(missing.error_message().size(), 300u);
  EXPECT_CODE(DeleteDataset(huge), StatusCode::NOT_FOUND);
  // A name with a line break and control characters cannot forge a log line: it is logged
  // escaped, and so is the error message that repeats it.
  const std::string forged = "m\n[forged] line\x1b[2J\r";
  const grpc::Status forged_model = LookUpModel(forged);
  EXPECT_CODE(forged_model, StatusCode::NOT_FOUND);
  EXPECT_EQ(forged_model.error_message().find('\n'), std::string::npos)
      << forged_model.error_message();
  EXPECT_CODE(DeleteDataset(forged), StatusCode::NOT_FOUND);
  EXPECT_CODE(UploadRows(forged, ClassificationData(4, 4, 1)), StatusCode::INVALID_ARGUMENT);
  rpc_log->flush();
  rpc_log->sinks().pop_back();
  rpc_log->set_level(level);
  const std::string text = logged.str();
  std::vector<std::string> lines;
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);) lines.push_back(line);
  // One line per call: CreateModel, GetModel, DeleteDataset, GetModel, DeleteDataset,
  // UploadDataset; none starts with the forged text, none holds a raw control character.
  EXPECT_EQ(lines.size(), 6u) << text.substr(0, 2000);
  EXPECT_NE(text.find("model=m\\x0a[forged] line\\x1b[2J\\x0d"), std::string::npos)
      << text.substr(0, 2000);
  for (const std::string& line : lines) {
    EXPECT_NE(line.rfind("[forged]", 0), 0u) << line;
    EXPECT_TRUE(std::none_of(line.begin(), line.end(), [](char c) {
      return static_cast<unsigned char>(c) < 0x20;
    })) << line;
    // No line carries the megabyte name.
    EXPECT_LT(line.size(), 2048u) << line.substr(0, 200);
  }
}

TEST_F(ServiceTest, EvaluateStopsAtItsDeadline) {
  StartServer();  // one worker: a call still computing holds back the next
  ASSERT_OK(CreateModel("slow", SlowSpec()));
  ASSERT_OK(UploadRows("big", ClassificationData(300000, 8, 3), v1::TASK_CLASSIFICATION, 30000));
  for (const v1::EvalMode mode : {v1::EVAL_MODE_EVAL, v1::EVAL_MODE_MONTE_CARLO}) {
    v1::EvaluateRequest req;
    req.set_model("slow");
    req.set_dataset("big");
    req.set_mode(mode);
    req.set_samples(kMaxSamples);
    v1::EvaluateResponse resp;
    Ctx short_ctx;
    short_ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::milliseconds(200));
    EXPECT_CODE(stub_->Evaluate(&short_ctx, req, &resp), StatusCode::DEADLINE_EXCEEDED);
    // The worker is free again soon after the deadline, not seconds of work later.
    req.set_limit(10);
    const auto start = std::chrono::steady_clock::now();
    ASSERT_OK(Evaluate(req, &resp));
    EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::milliseconds(700))
        << "mode " << mode;
  }
}

TEST_F(ServiceTest, BadDropoutRatesAreInvalidArgument) {
  StartServer();
  for (double rate : {1.0, -0.1, std::numeric_limits<double>::quiet_NaN()}) {
    v1::ModelSpec spec = ClassifierSpec();
    spec.mutable_layers(2)->set_rate(rate);
    const grpc::Status s = CreateModel("m", spec);
    EXPECT_CODE(s, StatusCode::INVALID_ARGUMENT);
    EXPECT_NE(s.error_message().find("rate"), std::string::npos) << s.error_message();
    EXPECT_NE(s.error_message().find("layers[2]"), std::string::npos) << s.error_message();
  }
  EXPECT_TRUE(ListModels().empty());
  v1::CreateModelRequest no_spec;
  no_spec.set_name("m");
  v1::CreateModelResponse resp;
  Ctx ctx;
  EXPECT_CODE(stub_->CreateModel(&ctx, no_spec, &resp), StatusCode::INVALID_ARGUMENT);
}

TEST_F(ServiceTest, BadInputsAreInvalidArgument) {
  StartServer();
  ASSERT_OK(CreateModel("m", ClassifierSpec()));
  std::vector<float> ok(8, 0.25f);
  auto check = [&](const v1::Tensor& t, const std::string& must_contain) {
    v1::PredictResponse pr;
    const grpc::Status s = Predict("m", t, &pr);
    EXPECT_CODE(s, StatusCode::INVALID_ARGUMENT);
    EXPECT_NE(s.error_message().find(must_contain), std::string::npos) << s.error_message();
    v1::PredictUncertaintyResponse ur;
    EXPECT_CODE(Uncertainty(UncertaintyRequest("m", t, 5, 1), &ur), StatusCode::INVALID_ARGUMENT);
  };
  check(Batch(std::vector<float>(6, 0.f), {2, 3}), "inputs");  // rows of 3, the model wants 4
  check(Batch(std::vector<float>(10, 0.f), {2, 5}), "inputs");
  std::vector<float> nan = ok;
  nan[1 * 4 + 2] = std::numeric_limits<float>::quiet_NaN();
  check(Batch(nan, {2, 4}), "row 1, column 2");
  std::vector<float> inf = ok;
  inf[0 * 4 + 3] = std::numeric_limits<float>::infinity();
  check(Batch(inf, {2, 4}), "row 0, column 3");
  check(Batch({}, {}), "inputs");                                // no shape, no values
  check(Batch({}, {0, 4}), "inputs.shape[0]");                   // an empty batch
  check(Batch(std::vector<float>(7, 0.f), {2, 4}), "7 values");  // shape needs 8
  check(Batch(std::vector<float>(9, 0.f), {2, 4}), "9 values");
  v1::PredictResponse pr;
  ASSERT_OK(Predict("m", Batch(ok, {2, 4}), &pr));
}

TEST_F(ServiceTest, SampleLimits) {
  StartServer();
  ASSERT_OK(CreateModel("m", ClassifierSpec()));
  ASSERT_OK(UploadRows("d", ClassificationData(20, 4, 1)));
  const v1::Tensor x = Batch(std::vector<float>(4, 0.1f), {1, 4});
  v1::PredictUncertaintyResponse r;
  const grpc::Status negative = Uncertainty(UncertaintyRequest("m", x, -1, 1), &r);
  EXPECT_CODE(negative, StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(negative.error_message().find("samples"), std::string::npos);
  EXPECT_CODE(Uncertainty(UncertaintyRequest("m", x, kMaxSamples + 1, 1), &r),
              StatusCode::RESOURCE_EXHAUSTED);
  ASSERT_OK(Uncertainty(UncertaintyRequest("m", x, kMaxSamples, 1), &r));
  EXPECT_EQ(r.num_samples(), kMaxSamples);

  v1::EvaluateRequest ev;
  ev.set_model("m");
  ev.set_dataset("d");
  ev.set_mode(v1::EVAL_MODE_MONTE_CARLO);
  ev.set_samples(-3);
  v1::EvaluateResponse er;
  EXPECT_CODE(Evaluate(ev, &er), StatusCode::INVALID_ARGUMENT);
  ev.set_samples(kMaxSamples + 1);
  EXPECT_CODE(Evaluate(ev, &er), StatusCode::RESOURCE_EXHAUSTED);
  ev.set_samples(0);
  ASSERT_OK(Evaluate(ev, &er));
  EXPECT_EQ(er.samples(), kDefaultSamples);
  ev.set_mode(static_cast<v1::EvalMode>(9));
  EXPECT_CODE(Evaluate(ev, &er), StatusCode::INVALID_ARGUMENT);
}

TEST_F(ServiceTest, MonteCarloOnADeterministicModelIsFailedPrecondition) {
  StartServer();
  ASSERT_OK(CreateModel("plain", DeterministicSpec()));  // every sample would be equal
  const v1::Tensor x = Batch(std::vector<float>(4, 0.1f), {1, 4});
  v1::PredictUncertaintyResponse r;
  ASSERT_OK(UploadRows("d", ClassificationData(20, 4, 1)));
  const grpc::Status mc = Uncertainty(UncertaintyRequest("plain", x, 8, 1), &r);
  EXPECT_CODE(mc, StatusCode::FAILED_PRECONDITION);
  EXPECT_NE(mc.error_message().find("model 'plain' has no stochastic layer"), std::string::npos)
      << mc.error_message();
  EXPECT_NE(mc.error_message().find("use Predict"), std::string::npos) << mc.error_message();

  v1::EvaluateRequest ev;
  ev.set_model("plain");
  ev.set_dataset("d");
  ev.set_mode(v1::EVAL_MODE_MONTE_CARLO);
  v1::EvaluateResponse er;
  EXPECT_CODE(Evaluate(ev, &er), StatusCode::FAILED_PRECONDITION);
  ev.set_mode(v1::EVAL_MODE_EVAL);
  ASSERT_OK(Evaluate(ev, &er));
  v1::PredictResponse pr;
  ASSERT_OK(Predict("plain", x, &pr));

  // A dropout layer with rate 0 is the identity: still nothing stochastic.
  v1::ModelSpec zero_rate = DeterministicSpec();
  zero_rate.mutable_layers(1)->set_type("dropout");
  ASSERT_OK(CreateModel("zero_rate", zero_rate));
  EXPECT_CODE(Uncertainty(UncertaintyRequest("zero_rate", x, 8, 1), &r),
              StatusCode::FAILED_PRECONDITION);
}

TEST_F(ServiceTest, BatchAboveTheRowLimitIsResourceExhausted) {
  StartServer();
  ASSERT_OK(CreateModel("m", ClassifierSpec()));
  const v1::Tensor too_many =
      Batch(std::vector<float>((kMaxBatchRows + 1) * 4, 0.f), {kMaxBatchRows + 1, 4});
  v1::PredictResponse pr;
  EXPECT_CODE(Predict("m", too_many, &pr), StatusCode::RESOURCE_EXHAUSTED);
  v1::PredictUncertaintyResponse ur;
  EXPECT_CODE(Uncertainty(UncertaintyRequest("m", too_many, 2, 1), &ur),
              StatusCode::RESOURCE_EXHAUSTED);
  ASSERT_OK(
      Predict("m", Batch(std::vector<float>(kMaxBatchRows * 4, 0.f), {kMaxBatchRows, 4}), &pr));
  EXPECT_EQ(pr.outputs().shape(0), kMaxBatchRows);
}

TEST_F(ServiceTest, OversizeMessagesAreResourceExhausted) {
  ServerConfig config = Config();
  config.max_message_bytes = 16 << 10;
  config.service.max_batch_rows = 1 << 20;
  StartServer(config);
  ASSERT_OK(CreateModel("m", ClassifierSpec()));
  // 8192 floats: 32 KiB on the wire, twice the limit.
  v1::PredictResponse pr;
  EXPECT_CODE(Predict("m", Batch(std::vector<float>(8192, 0.5f), {2048, 4}), &pr),
              StatusCode::RESOURCE_EXHAUSTED);
  // A response above the limit: 100 samples x 40 rows x 3 classes = 48 KiB.
  v1::PredictUncertaintyRequest big =
      UncertaintyRequest("m", Batch(std::vector<float>(160, 0.5f), {40, 4}), 100, 1);
  big.set_return_samples(true);
  v1::PredictUncertaintyResponse ur;
  EXPECT_CODE(Uncertainty(big, &ur), StatusCode::RESOURCE_EXHAUSTED);
  // Small messages still pass.
  ASSERT_OK(Predict("m", Batch(std::vector<float>(8, 0.5f), {2, 4}), &pr));
}

TEST_F(ServiceTest, SecondTrainOnABusyModelIsFailedPrecondition) {
  StartServer();
  ASSERT_OK(CreateModel("slow", SlowSpec()));
  ASSERT_OK(UploadRows("slow-data", ClassificationData(2000, 8, 13), v1::TASK_CLASSIFICATION, 500));
  v1::TrainRequest req = TrainRequest("slow", "slow-data", 100, 8);
  req.set_report_every_steps(1);

  Ctx ctx(120);
  std::promise<void> first_event;
  std::atomic<int> events{0};
  grpc::Status first_status;
  std::thread trainer([&] {
    auto reader = stub_->Train(&ctx, req);
    v1::TrainEvent e;
    while (reader->Read(&e)) {
      if (e.kind() == v1::TrainEvent::KIND_STEP || e.kind() == v1::TrainEvent::KIND_EPOCH) {
        if (events++ == 0) first_event.set_value();
      }
    }
    first_status = reader->Finish();
    if (events == 0) first_event.set_value();
  });
  ASSERT_EQ(first_event.get_future().wait_for(std::chrono::seconds(60)), std::future_status::ready);
  ASSERT_GT(events.load(), 0) << "the first Train ended early: " << Describe(first_status);

  const grpc::Status second = Train(TrainRequest("slow", "slow-data", 1, 8));
  EXPECT_CODE(second, StatusCode::FAILED_PRECONDITION);
  EXPECT_NE(second.error_message().find("slow"), std::string::npos) << second.error_message();
  EXPECT_TRUE(GetModel("slow").training());
  EXPECT_CODE(DeleteModel("slow"), StatusCode::FAILED_PRECONDITION);
  ctx.TryCancel();
  trainer.join();
  EXPECT_CODE(first_status, StatusCode::CANCELLED);
  EXPECT_FALSE(WaitUntilIdle("slow").training());
  // Once the first run is over the model trains again.
  ASSERT_OK(UploadRows("tiny", ClassificationData(16, 8, 1)));
  ASSERT_OK(Train(TrainRequest("slow", "tiny", 1, 8)));
}

TEST_F(ServiceTest, ImportDatasetOutsideTheDataRootIsRefused) {
  StartServer();
  const std::string csv = "a,b,label\n1,2,0\n3,4,1\n";
  WriteFile(dir_.path() / "data" / "inside.csv", csv);
  WriteFile(dir_.path() / "outside.csv", csv);
  WriteFile(dir_.path() / "data2" / "sibling.csv", csv);  // shares the root's name as a prefix
  fs::create_directories(dir_.path() / "data" / "links");
  fs::create_symlink(dir_.path() / "outside.csv", dir_.path() / "data" / "links" / "out.csv");
  fs::create_directory_symlink(dir_.path() / "data2", dir_.path() / "data" / "links" / "dir");

  auto import = [&](const std::string& path, const std::string& label_path = "") {
    v1::ImportDatasetRequest req;
    req.set_name("attempt");
    req.set_path(path);
    req.set_label_path(label_path);
    return ImportDataset(req);
  };
  EXPECT_CODE(import("../etc/passwd"), StatusCode::PERMISSION_DENIED);
  EXPECT_CODE(import("../outside.csv"), StatusCode::PERMISSION_DENIED);
  EXPECT_CODE(import("sub/../../outside.csv"), StatusCode::PERMISSION_DENIED);
  EXPECT_CODE(import("../data2/sibling.csv"), StatusCode::PERMISSION_DENIED);
  EXPECT_CODE(import("links/out.csv"), StatusCode::PERMISSION_DENIED);
  EXPECT_CODE(import("links/dir/sibling.csv"), StatusCode::PERMISSION_DENIED);
  EXPECT_CODE(import("/etc/passwd"), StatusCode::INVALID_ARGUMENT);
  EXPECT_CODE(import((dir_.path() / "outside.csv").string()), StatusCode::INVALID_ARGUMENT);
  EXPECT_CODE(import(""), StatusCode::INVALID_ARGUMENT);
  // An IDX label file is held to the same rule.
  WriteFile(dir_.path() / "data" / "images-idx3-ubyte", "IDX images");
  EXPECT_CODE(import("images-idx3-ubyte", "../outside.csv"), StatusCode::PERMISSION_DENIED);
  EXPECT_CODE(import("images-idx3-ubyte", "links/out.csv"), StatusCode::PERMISSION_DENIED);
  EXPECT_TRUE(ListDatasets().empty());
  // A symlink that stays inside is fine, and so is the file itself.
  fs::create_symlink(dir_.path() / "data" / "inside.csv",
                     dir_.path() / "data" / "links" / "in.csv");
  ASSERT_OK(import("links/in.csv"));
  EXPECT_EQ(ListDatasets().size(), 1u);
}

TEST_F(ServiceTest, ImportDatasetWithoutADataRootIsFailedPrecondition) {
  ServerConfig config = Config();
  config.service.data_root.clear();
  StartServer(config);
  WriteFile(dir_.path() / "data" / "inside.csv", "a,label\n1,0\n");
  v1::ImportDatasetRequest req;
  req.set_name("x");
  req.set_path("inside.csv");
  const grpc::Status s = ImportDataset(req);
  EXPECT_CODE(s, StatusCode::FAILED_PRECONDITION);
  EXPECT_NE(s.error_message().find("data-root"), std::string::npos) << s.error_message();
}

TEST_F(ServiceTest, ReadOnlyReplicaRefusesWrites) {
  StartServer();
  ASSERT_OK(CreateModel("m", ClassifierSpec()));
  ASSERT_OK(UploadRows("d", ClassificationData(32, 4, 1)));
  ASSERT_OK(Train(TrainRequest("m", "d", 1)));
  WriteFile(dir_.path() / "data" / "f.csv", "a,label\n1,0\n");
  StopServer();

  ServerConfig config = Config();
  config.service.read_only = true;
  StartServer(config);
  EXPECT_CODE(CreateModel("m2", ClassifierSpec()), StatusCode::FAILED_PRECONDITION);
  EXPECT_CODE(Train(TrainRequest("m", "d", 1)), StatusCode::FAILED_PRECONDITION);
  EXPECT_CODE(UploadRows("d2", ClassificationData(8, 4, 1)), StatusCode::FAILED_PRECONDITION);
  v1::ImportDatasetRequest imp;
  imp.set_name("f");
  imp.set_path("f.csv");
  EXPECT_CODE(ImportDataset(imp), StatusCode::FAILED_PRECONDITION);
  EXPECT_CODE(DeleteModel("m"), StatusCode::FAILED_PRECONDITION);
  EXPECT_CODE(DeleteDataset("d"), StatusCode::FAILED_PRECONDITION);
  // It serves what the store holds.
  EXPECT_EQ(GetModel("m").version(), 2);
  v1::PredictResponse pr;
  ASSERT_OK(Predict("m", Batch(std::vector<float>(4, 0.f), {1, 4}), &pr));
  EXPECT_EQ(pr.version(), 2);
  EXPECT_EQ(ListDatasets().size(), 1u);
  EXPECT_EQ(ListModels().size(), 1u);
  EXPECT_FALSE(fs::exists(dir_.path() / "store" / "models" / "m2"));
  EXPECT_FALSE(fs::exists(dir_.path() / "store" / "models" / "m" / "3"));
}

TEST_F(ServiceTest, DatasetThatDoesNotFitTheModelIsInvalidArgument) {
  StartServer();
  ASSERT_OK(CreateModel("clf", ClassifierSpec()));  // input [4], 3 classes
  ASSERT_OK(CreateModel("reg", RegressorSpec()));   // input [4], 1 target
  ASSERT_OK(UploadRows("regression", RegressionData(20, 4, 1), v1::TASK_REGRESSION));
  ASSERT_OK(UploadRows("wide", ClassificationData(20, 5, 1)));
  Data five_classes = ClassificationData(20, 4, 1);
  five_classes.y[3] = 4;
  ASSERT_OK(UploadRows("five", five_classes));
  Data two_targets = RegressionData(10, 4, 2);
  two_targets.targets = 2;
  two_targets.y.insert(two_targets.y.end(), two_targets.y.begin(), two_targets.y.end());
  ASSERT_OK(UploadRows("two-targets", two_targets, v1::TASK_REGRESSION));
  ASSERT_OK(UploadRows("fits", ClassificationData(20, 4, 1)));

  auto both = [&](const std::string& model, const std::string& dataset) {
    const grpc::Status s = Train(TrainRequest(model, dataset, 1));
    EXPECT_CODE(s, StatusCode::INVALID_ARGUMENT);
    EXPECT_NE(s.error_message().find(dataset), std::string::npos) << s.error_message();
    v1::EvaluateRequest ev;
    ev.set_model(model);
    ev.set_dataset(dataset);
    v1::EvaluateResponse er;
    EXPECT_CODE(Evaluate(ev, &er), StatusCode::INVALID_ARGUMENT);
  };
  both("clf", "regression");
  both("clf", "wide");
  both("clf", "five");
  both("reg", "fits");
  both("reg", "two-targets");
  EXPECT_EQ(GetModel("clf").version(), 1);
  EXPECT_EQ(GetModel("reg").version(), 1);
  ASSERT_OK(Train(TrainRequest("clf", "fits", 1)));
}

}  // namespace
}  // namespace dropnet::service
