// In-process tests of the dropnet.v1.Dropnet server's life cycle: cancelled training, restarts on
// the same store, predicting while training, shutting down during training and during calls, and
// the gRPC health service.
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <future>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include <google/protobuf/util/field_comparator.h>
#include <google/protobuf/util/message_differencer.h>

#include "grpc/health/v1/health.grpc.pb.h"
#include "tests/service/service_fixture.h"

namespace dropnet::service {
namespace {

namespace fs = std::filesystem;
using google::protobuf::util::MessageDifferencer;
using grpc::StatusCode;
using grpc::health::v1::Health;
using grpc::health::v1::HealthCheckRequest;
using grpc::health::v1::HealthCheckResponse;

// ---- Cancellation, restarts, concurrency, shutdown ----

TEST_F(ServiceTest, CancelledTrainKeepsTheLastPublishedVersion) {
  StartServer();
  ASSERT_OK(CreateModel("slow", SlowSpec()));
  ASSERT_OK(UploadRows("slow-data", ClassificationData(2000, 8, 13), v1::TASK_CLASSIFICATION, 500));
  Ctx ctx(120);
  auto reader = stub_->Train(&ctx, TrainRequest("slow", "slow-data", 100, 8));
  v1::TrainEvent e;
  int64_t last_epoch_version = 0;
  int epoch_events = 0;
  while (reader->Read(&e)) {
    if (e.kind() == v1::TrainEvent::KIND_EPOCH) {
      ++epoch_events;
      last_epoch_version = e.version();
      ctx.TryCancel();
    }
  }
  const grpc::Status s = reader->Finish();
  EXPECT_CODE(s, StatusCode::CANCELLED);
  ASSERT_GE(epoch_events, 1);
  EXPECT_EQ(last_epoch_version, 2);

  const v1::ModelInfo m = WaitUntilIdle("slow");
  EXPECT_FALSE(m.training());
  EXPECT_EQ(m.version(), last_epoch_version);
  ASSERT_GT(m.versions_size(), 0);
  EXPECT_EQ(m.versions(m.versions_size() - 1), last_epoch_version);
  EXPECT_EQ(m.history_size(), epoch_events);
  EXPECT_LT(m.steps(), 100 * 250);
  v1::PredictResponse pr;
  ASSERT_OK(Predict("slow", Batch(std::vector<float>(8, 0.f), {1, 8}), &pr));
  EXPECT_EQ(pr.version(), last_epoch_version);
  // Nothing newer reached the store either.
  EXPECT_FALSE(fs::exists(dir_.path() / "store" / "models" / "slow" /
                          std::to_string(last_epoch_version + 1)));
}

TEST_F(ServiceTest, RestartServesTheSameModelsBitForBit) {
  StartServer();
  TrainedClassifier(3);
  ASSERT_OK(CreateModel("reg", RegressorSpec(4, 2.0)));
  ASSERT_OK(UploadRows("reg-data", RegressionData(64, 4, 3), v1::TASK_REGRESSION));
  v1::TrainRequest std_req = TrainRequest("reg", "reg-data", 2);
  std_req.set_standardize(true);
  ASSERT_OK(Train(std_req));
  const Data probe = ClassificationData(9, 4, 55);
  const v1::Tensor x = RowsOf(probe, 9);

  v1::PredictResponse clf_before, reg_before;
  ASSERT_OK(Predict("clf", x, &clf_before));
  ASSERT_OK(Predict("reg", x, &reg_before));
  v1::PredictUncertaintyResponse mc_before;
  ASSERT_OK(Uncertainty(UncertaintyRequest("clf", x, 20, 42), &mc_before));
  const auto models_before = ListModels();
  const auto datasets_before = ListDatasets();
  ASSERT_EQ(models_before.size(), 2u);
  ASSERT_EQ(datasets_before.size(), 2u);

  StopServer();
  StartServer();

  const auto models_after = ListModels();
  ASSERT_EQ(models_after.size(), models_before.size());
  for (size_t i = 0; i < models_after.size(); ++i) {
    // Histories without a validation split hold NaN, which must compare equal to itself here.
    google::protobuf::util::DefaultFieldComparator comparator;
    comparator.set_treat_nan_as_equal(true);
    std::string diff;
    MessageDifferencer differ;
    differ.set_field_comparator(&comparator);
    differ.ReportDifferencesToString(&diff);
    EXPECT_TRUE(differ.Compare(models_before[i], models_after[i])) << diff;
  }
  const auto datasets_after = ListDatasets();
  ASSERT_EQ(datasets_after.size(), datasets_before.size());
  for (size_t i = 0; i < datasets_after.size(); ++i) {
    EXPECT_TRUE(MessageDifferencer::Equals(datasets_before[i], datasets_after[i]))
        << datasets_after[i].ShortDebugString();
  }
  v1::PredictResponse clf_after, reg_after;
  ASSERT_OK(Predict("clf", x, &clf_after));
  ASSERT_OK(Predict("reg", x, &reg_after));
  EXPECT_EQ(clf_after.version(), clf_before.version());
  EXPECT_TRUE(SameBits(clf_before.outputs(), clf_after.outputs()));
  EXPECT_TRUE(SameBits(reg_before.outputs(), reg_after.outputs()));  // standardisation kept
  v1::PredictUncertaintyResponse mc_after;
  ASSERT_OK(Uncertainty(UncertaintyRequest("clf", x, 20, 42), &mc_after));
  EXPECT_EQ(mc_before.SerializeAsString(), mc_after.SerializeAsString());

  // The restarted server keeps counting versions and trains on the stored data set.
  std::vector<v1::TrainEvent> events;
  ASSERT_OK(Train(TrainRequest("clf", "clf-data", 1), &events));
  EXPECT_EQ(events.back().version(), clf_before.version() + 1);
}

TEST_F(ServiceTest, RestartDropsUnfinishedWrites) {
  StartServer();
  ASSERT_OK(CreateModel("m", ClassifierSpec()));
  StopServer();
  const fs::path leftover = dir_.path() / "store" / "models" / "m" / ".2.tmp-1-1-1";
  fs::create_directories(leftover);
  WriteFile(leftover / "checkpoint.pb", "half a checkpoint");
  StartServer();
  EXPECT_FALSE(fs::exists(leftover));
  const v1::ModelInfo m = GetModel("m");
  EXPECT_EQ(m.version(), 1);
  EXPECT_EQ(m.versions_size(), 1);
}

TEST_F(ServiceTest, PredictWhileTrainingNeverGoesBackwards) {
  StartServer();
  ASSERT_OK(CreateModel("m", SlowSpec()));
  const Data d = ClassificationData(2000, 8, 21);
  ASSERT_OK(UploadRows("d", d, v1::TASK_CLASSIFICATION, 500));
  const v1::Tensor x = RowsOf(d, 8);

  std::atomic<bool> done{false};
  std::atomic<int> calls{0};
  std::atomic<int> ready{0};  // clients that have made their first call
  std::mutex mu;
  std::vector<std::string> errors;
  std::vector<int64_t> max_seen(4, 0);
  std::vector<std::thread> clients;
  for (int i = 0; i < 4; ++i) {
    clients.emplace_back([&, i] {
      auto stub = v1::Dropnet::NewStub(channel_);
      int64_t last = 0;
      uint64_t seed = 1;
      while (!done.load()) {
        int64_t version = 0;
        grpc::Status s;
        if ((i + calls.load()) % 2 == 0) {
          v1::PredictRequest req;
          req.set_model("m");
          *req.mutable_inputs() = x;
          v1::PredictResponse resp;
          Ctx ctx;
          s = stub->Predict(&ctx, req, &resp);
          version = resp.version();
          if (s.ok() && resp.outputs().values_size() != 8 * 3)
            s = grpc::Status(StatusCode::INTERNAL, "size");
        } else {
          v1::PredictUncertaintyRequest req = UncertaintyRequest("m", x, 8, seed++);
          v1::PredictUncertaintyResponse resp;
          Ctx ctx;
          s = stub->PredictUncertainty(&ctx, req, &resp);
          version = resp.version();
          if (s.ok() && resp.mutual_information_size() != 8)
            s = grpc::Status(StatusCode::INTERNAL, "size");
        }
        if (calls++ < 4) ++ready;
        std::lock_guard lock(mu);
        if (!s.ok()) {
          errors.push_back(Describe(s));
        } else if (version < last) {
          errors.push_back("client " + std::to_string(i) + " saw version " +
                           std::to_string(version) + " after " + std::to_string(last));
        } else {
          last = version;
          max_seen[i] = last;
        }
      }
    });
  }
  // Training starts once the callers are busy, and runs about 5 x 250 steps.
  for (int i = 0; i < 3000 && ready.load() < 4; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  std::vector<v1::TrainEvent> events;
  const grpc::Status train = Train(TrainRequest("m", "d", 5, 8), &events);
  done = true;
  for (auto& t : clients) t.join();
  ASSERT_OK(train);
  EXPECT_TRUE(errors.empty()) << errors.size() << " errors, first: " << errors.front();
  EXPECT_GT(calls.load(), 8);
  EXPECT_EQ(events.back().version(), 6);
  for (int i = 0; i < 4; ++i) EXPECT_LE(max_seen[i], 6);
  EXPECT_GT(*std::max_element(max_seen.begin(), max_seen.end()), 1)
      << "no caller saw a version published during training";
  v1::PredictResponse pr;
  ASSERT_OK(Predict("m", x, &pr));
  EXPECT_EQ(pr.version(), 6);
}

TEST_F(ServiceTest, ShutdownDuringTrainingSavesTheWork) {
  StartServer();
  ASSERT_OK(CreateModel("slow", SlowSpec()));
  ASSERT_OK(UploadRows("slow-data", ClassificationData(2000, 8, 13), v1::TASK_CLASSIFICATION, 500));
  std::promise<int64_t> first_epoch;
  grpc::Status status;
  std::thread trainer([&] {
    Ctx ctx(120);
    auto reader = stub_->Train(&ctx, TrainRequest("slow", "slow-data", 100, 8));
    v1::TrainEvent e;
    bool told = false;
    while (reader->Read(&e)) {
      if (e.kind() == v1::TrainEvent::KIND_EPOCH && !told) {
        first_epoch.set_value(e.version());
        told = true;
      }
    }
    status = reader->Finish();
    if (!told) first_epoch.set_value(-1);
  });
  auto future = first_epoch.get_future();
  ASSERT_EQ(future.wait_for(std::chrono::seconds(60)), std::future_status::ready);
  const int64_t epoch_version = future.get();
  server_->Shutdown();
  trainer.join();
  ASSERT_GE(epoch_version, 2) << Describe(status);
  // Shutting down ends the call as UNAVAILABLE and keeps the unfinished epoch as a version.
  EXPECT_CODE(status, StatusCode::UNAVAILABLE);
  const std::string marker = "saved as version ";
  const auto at = status.error_message().find(marker);
  ASSERT_NE(at, std::string::npos) << status.error_message();
  const int64_t saved = std::stoll(status.error_message().substr(at + marker.size()));
  EXPECT_GE(saved, epoch_version);

  StartServer();
  const v1::ModelInfo m = GetModel("slow");
  EXPECT_EQ(m.version(), saved);
  EXPECT_FALSE(m.training());
}

TEST_F(ServiceTest, CallsDuringShutdownAreUnavailable) {
  StartServer();
  ASSERT_OK(CreateModel("m", ClassifierSpec()));
  server_->service().StartDraining();
  v1::PredictResponse pr;
  EXPECT_CODE(Predict("m", Batch(std::vector<float>(4, 0.f), {1, 4}), &pr),
              StatusCode::UNAVAILABLE);
  EXPECT_CODE(CreateModel("n", ClassifierSpec()), StatusCode::UNAVAILABLE);
}

TEST_F(ServiceTest, ShutdownLetsAnInFlightUncertaintyCallFinish) {
  ServerConfig config = Config();
  config.service.max_samples = 100000;
  config.shutdown_grace_seconds = 30;
  StartServer(config);
  ASSERT_OK(CreateModel("slow", SlowSpec()));
  const Data d = ClassificationData(kMaxBatchRows, 8, 5);
  // Long enough (about a second) to be running when the shutdown starts.
  const auto req = UncertaintyRequest("slow", RowsOf(d, kMaxBatchRows), 20000, 1);
  grpc::Status status;
  v1::PredictUncertaintyResponse resp;
  std::thread caller([&] { status = Uncertainty(req, &resp); });
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  const auto start = std::chrono::steady_clock::now();
  server_->Shutdown();
  caller.join();
  // The call got its grace: it finished with its answer instead of being cut short.
  ASSERT_OK(status);
  EXPECT_EQ(resp.mean().shape(0), kMaxBatchRows);
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(30));
}

TEST_F(ServiceTest, HealthIsNotServingForTheDrainDelayWhileCallsAreServed) {
  ServerConfig config = Config();
  config.drain_delay_seconds = 1;
  StartServer(config);
  ASSERT_OK(CreateModel("m", ClassifierSpec()));
  auto health = Health::NewStub(channel_);
  const auto start = std::chrono::steady_clock::now();
  std::thread stopper([&] { server_->Shutdown(); });
  bool not_serving = false;
  while (!not_serving && std::chrono::steady_clock::now() - start < std::chrono::seconds(5)) {
    HealthCheckRequest req;
    req.set_service("dropnet.v1.Dropnet");
    HealthCheckResponse resp;
    Ctx ctx;
    ASSERT_OK(health->Check(&ctx, req, &resp));
    not_serving = resp.status() == HealthCheckResponse::NOT_SERVING;
  }
  ASSERT_TRUE(not_serving);
  // Within the delay probes see NOT_SERVING and calls are still answered.
  v1::PredictResponse pr;
  ASSERT_OK(Predict("m", Batch(std::vector<float>(4, 0.f), {1, 4}), &pr));
  HealthCheckRequest req;
  HealthCheckResponse resp;
  Ctx ctx;
  ASSERT_OK(health->Check(&ctx, req, &resp));
  EXPECT_EQ(resp.status(), HealthCheckResponse::NOT_SERVING);
  stopper.join();
  EXPECT_GE(std::chrono::steady_clock::now() - start, std::chrono::milliseconds(900));
  // Then new calls are refused as retryable.
  EXPECT_CODE(Predict("m", Batch(std::vector<float>(4, 0.f), {1, 4}), &pr),
              StatusCode::UNAVAILABLE);
}

// ---- Health ----

TEST_F(ServiceTest, HealthServingThenNotServingOnShutdown) {
  StartServer();
  auto health = Health::NewStub(channel_);
  for (const char* service : {"", "dropnet.v1.Dropnet"}) {
    HealthCheckRequest req;
    req.set_service(service);
    HealthCheckResponse resp;
    Ctx ctx;
    ASSERT_OK(health->Check(&ctx, req, &resp));
    EXPECT_EQ(resp.status(), HealthCheckResponse::SERVING) << "'" << service << "'";
  }
  {
    HealthCheckRequest req;
    req.set_service("no.such.Service");
    HealthCheckResponse resp;
    Ctx ctx;
    EXPECT_CODE(health->Check(&ctx, req, &resp), StatusCode::NOT_FOUND);
  }

  // Watch both names; shutting down must turn them NOT_SERVING before the server goes away.
  std::vector<std::unique_ptr<Ctx>> contexts;
  std::vector<std::unique_ptr<grpc::ClientReader<HealthCheckResponse>>> watches;
  for (const char* service : {"", "dropnet.v1.Dropnet"}) {
    HealthCheckRequest req;
    req.set_service(service);
    contexts.push_back(std::make_unique<Ctx>(30));
    watches.push_back(health->Watch(contexts.back().get(), req));
    HealthCheckResponse first;
    ASSERT_TRUE(watches.back()->Read(&first));
    EXPECT_EQ(first.status(), HealthCheckResponse::SERVING);
  }
  std::thread stopper([&] { server_->Shutdown(); });
  for (size_t i = 0; i < watches.size(); ++i) {
    HealthCheckResponse next;
    bool not_serving = false;
    while (watches[i]->Read(&next)) {
      if (next.status() == HealthCheckResponse::NOT_SERVING) {
        not_serving = true;
        break;
      }
    }
    EXPECT_TRUE(not_serving) << "watch " << i << " never saw NOT_SERVING";
    contexts[i]->TryCancel();
    watches[i]->Finish();
  }
  stopper.join();
}

}  // namespace
}  // namespace dropnet::service
