// Dynamic batching (server/service/batcher.h) through the real server: concurrent Predict and
// PredictUncertainty calls merged into one engine call get, bit for bit, the answers they get
// from a server that does not merge; a caller whose deadline passes or who cancels while its
// call waits is left out without touching the others; errors stay with the caller that made them.
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <cmath>
#include <latch>
#include <string>
#include <thread>
#include <vector>

#include "tests/service/service_fixture.h"

namespace dropnet::service {
namespace {

constexpr int kWidth = 4;

// One caller's request: eval (samples 0) or Monte Carlo, `rows` rows from row `first` of the data.
struct CallSpec {
  std::string model;
  int samples = 0;
  int64_t rows = 1;
  int64_t first = 0;
  uint64_t seed = 0;
};

class BatchingTest : public ServiceTest {
 protected:
  void SetUp() override {
    data_ = ClassificationData(64, kWidth, 3);
    StartServer(WithWindow(0));
    ASSERT_OK(CreateModel("clf", ClassifierSpec(kWidth, 5)));
    ASSERT_OK(CreateModel("reg", RegressorSpec(kWidth, 2.0)));
    // Trained with standardisation, so that its answers go through both of its transforms.
    ASSERT_OK(UploadRows("reg-data", RegressionData(64, kWidth, 5), v1::TASK_REGRESSION));
    v1::TrainRequest train = TrainRequest("reg", "reg-data", 2);
    train.set_standardize(true);
    ASSERT_OK(Train(train));
    ASSERT_EQ(GetModel("reg").target_standardization().scale_size(), 1);
  }

  ServerConfig WithWindow(int64_t window_us) const {
    ServerConfig c = Config();
    c.service.batch_window_us = window_us;
    c.service.batch_max_rows = 64;
    c.service.workers = 1;
    c.service.compute_threads = 2;
    return c;
  }

  v1::Tensor Rows(int64_t first, int64_t rows) const {
    std::vector<float> v(data_.x.begin() + first * kWidth,
                         data_.x.begin() + (first + rows) * kWidth);
    return Batch(v, {rows, kWidth});
  }

  // The call's answer as bytes (every field, seed and version included), or its status.
  grpc::Status Call(const CallSpec& c, std::string* answer,
                    std::chrono::milliseconds deadline = std::chrono::seconds(30),
                    grpc::ClientContext* ctx = nullptr) {
    grpc::ClientContext own;
    if (!ctx) ctx = &own;
    ctx->set_deadline(std::chrono::system_clock::now() + deadline);
    grpc::Status s;
    if (c.samples == 0) {
      v1::PredictRequest req;
      req.set_model(c.model);
      *req.mutable_inputs() = Rows(c.first, c.rows);
      v1::PredictResponse resp;
      s = stub_->Predict(ctx, req, &resp);
      *answer = resp.SerializeAsString();
    } else {
      v1::PredictUncertaintyRequest req =
          UncertaintyRequest(c.model, Rows(c.first, c.rows), c.samples, c.seed);
      v1::PredictUncertaintyResponse resp;
      s = stub_->PredictUncertainty(ctx, req, &resp);
      *answer = resp.SerializeAsString();
    }
    return s;
  }

  // Every call at once, each from its own thread.
  std::vector<grpc::Status> Concurrently(const std::vector<CallSpec>& calls,
                                         std::vector<std::string>* answers) {
    answers->assign(calls.size(), "");
    std::vector<grpc::Status> statuses(calls.size());
    std::latch start(static_cast<std::ptrdiff_t>(calls.size()));
    std::vector<std::thread> threads;
    for (size_t i = 0; i < calls.size(); ++i) {
      threads.emplace_back([&, i] {
        start.arrive_and_wait();
        statuses[i] = Call(calls[i], &(*answers)[i]);
      });
    }
    for (auto& t : threads) t.join();
    return statuses;
  }

  std::vector<std::string> SoloAnswers(const std::vector<CallSpec>& calls) {
    std::vector<std::string> out;
    for (const auto& c : calls) {
      std::string a;
      EXPECT_TRUE(Call(c, &a).ok());
      out.push_back(a);
    }
    return out;
  }

  const Batcher& batcher() { return server_->service().batcher(); }

  Data data_;
};

// Eval and Monte Carlo, two models, several seeds (some shared), batch sizes 1 to 4 and two
// values of T: every merged answer equals the call's answer from a server that does not merge.
TEST_F(BatchingTest, MergedAnswersAreBitEqualToSoloAnswers) {
  std::vector<CallSpec> calls;
  for (int i = 0; i < 36; ++i) {
    CallSpec c;
    c.model = i % 3 == 2 ? "reg" : "clf";
    c.samples = i % 3 == 0 ? 0 : (i % 4 == 1 ? 20 : 40);
    c.rows = 1 + i % 4;
    c.first = (i * 7) % 60;
    c.seed = 100 + i % 5;
    calls.push_back(c);
  }
  const std::vector<std::string> solo = SoloAnswers(calls);
  StartServer(WithWindow(20000));
  // Several rounds: the calls meet in different merged batches at different places.
  for (int round = 0; round < 3; ++round) {
    SCOPED_TRACE(round);
    std::vector<std::string> merged;
    const auto statuses = Concurrently(calls, &merged);
    for (size_t i = 0; i < calls.size(); ++i) {
      ASSERT_TRUE(statuses[i].ok()) << i << ": " << Describe(statuses[i]);
      EXPECT_EQ(merged[i], solo[i]) << "call " << i << " (" << calls[i].model << ", T "
                                    << calls[i].samples << ", " << calls[i].rows << " rows)";
    }
  }
  // The calls were merged: fewer engine calls than calls.
  EXPECT_GT(batcher().merged_parts(), batcher().merged_calls());
  EXPECT_GT(batcher().merged_calls(), 0);
}

// A caller whose deadline passes, and one who cancels, while their calls wait in a merged batch:
// they get DEADLINE_EXCEEDED and CANCELLED, are left out of the engine call, and the others get
// their own answers. A long Monte-Carlo evaluation holds the server's one worker meanwhile, so
// that every call of the test waits in the same batch, however slowly its thread starts.
TEST_F(BatchingTest, DeadlineOrCancelOfOneCallerLeavesTheOthersAlone) {
  std::vector<CallSpec> good;
  for (int i = 0; i < 6; ++i) good.push_back(CallSpec{"clf", 30, 1 + i % 2, i * 3, 7u + i});
  const std::vector<std::string> solo = SoloAnswers(good);
  ASSERT_OK(CreateModel("slow", SlowSpec()));
  // Seconds of work at least, however fast the machine: the test cancels it when done.
  ASSERT_OK(UploadRows("pool", ClassificationData(20000, 8, 5), v1::TASK_CLASSIFICATION, 2000));
  StartServer(WithWindow(1000));

  grpc::ClientContext blocker_ctx;
  blocker_ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(60));
  v1::EvaluateRequest slow;
  slow.set_model("slow");
  slow.set_dataset("pool");
  slow.set_mode(v1::EVAL_MODE_MONTE_CARLO);
  slow.set_samples(kMaxSamples);
  auto blocker = stub_->EvaluateStream(&blocker_ctx, slow);
  v1::EvaluateEvent first;
  ASSERT_TRUE(blocker->Read(&first));  // it computes on the worker
  ASSERT_TRUE(first.has_progress());

  std::vector<std::string> answers(good.size());
  std::vector<grpc::Status> statuses(good.size());
  std::vector<std::thread> threads;
  for (size_t i = 0; i < good.size(); ++i) {
    threads.emplace_back([&, i] { statuses[i] = Call(good[i], &answers[i]); });
  }
  // Every call joins the batch before the next step, however slowly its thread runs.
  const auto wait_for_queued = [&](int64_t n, const std::atomic<bool>* gave_up = nullptr) {
    const auto limit = std::chrono::steady_clock::now() + std::chrono::seconds(30);
    while (batcher().queued_parts() < n && !(gave_up && gave_up->load())) {
      ASSERT_LT(std::chrono::steady_clock::now(), limit) << batcher().queued_parts() << " queued";
      std::this_thread::sleep_for(std::chrono::milliseconds(2));
    }
  };
  wait_for_queued(6);
  std::string late_answer, cancelled_answer;
  grpc::Status late, cancelled;
  grpc::ClientContext cancel_ctx;
  std::thread cancelling_caller([&] {
    cancelled = Call(CallSpec{"clf", 30, 1, 50, 98}, &cancelled_answer, std::chrono::seconds(30),
                     &cancel_ctx);
  });
  wait_for_queued(7);
  std::atomic<bool> late_returned{false};
  std::thread late_caller([&] {
    late = Call(CallSpec{"clf", 30, 2, 40, 99}, &late_answer, std::chrono::milliseconds(100));
    late_returned = true;
  });
  wait_for_queued(8, &late_returned);  // a late caller's deadline may pass before it joins
  cancel_ctx.TryCancel();
  late_caller.join();
  cancelling_caller.join();
  blocker_ctx.TryCancel();  // the worker is free: the batch runs
  v1::EvaluateEvent e;
  while (blocker->Read(&e)) {
  }
  EXPECT_CODE(blocker->Finish(), grpc::StatusCode::CANCELLED);
  for (auto& t : threads) t.join();
  EXPECT_CODE(late, grpc::StatusCode::DEADLINE_EXCEEDED);
  EXPECT_CODE(cancelled, grpc::StatusCode::CANCELLED);
  for (size_t i = 0; i < good.size(); ++i) {
    ASSERT_TRUE(statuses[i].ok()) << i << ": " << Describe(statuses[i]);
    EXPECT_EQ(answers[i], solo[i]) << "call " << i;
  }
  // The six good calls were computed, merged, and the two that stopped were not.
  EXPECT_EQ(batcher().merged_parts(), 6);
  EXPECT_GE(batcher().merged_calls(), 1);
}

// Bad calls among good ones: each bad caller gets its own error, naming its field; the good
// callers get their own answers.
TEST_F(BatchingTest, ErrorsStayWithTheirCaller) {
  std::vector<CallSpec> good;
  for (int i = 0; i < 8; ++i) good.push_back(CallSpec{"clf", i % 2 ? 25 : 0, 1 + i % 3, i, 11});
  const std::vector<std::string> solo = SoloAnswers(good);
  StartServer(WithWindow(30000));
  std::vector<std::string> answers(good.size());
  std::vector<grpc::Status> statuses(good.size());
  std::vector<grpc::Status> bad(4);
  std::latch start(static_cast<std::ptrdiff_t>(good.size() + bad.size()));
  std::vector<std::thread> threads;
  for (size_t i = 0; i < good.size(); ++i) {
    threads.emplace_back([&, i] {
      start.arrive_and_wait();
      statuses[i] = Call(good[i], &answers[i]);
    });
  }
  auto send = [&](int k, auto&& make) {
    threads.emplace_back([&, k, make] {
      start.arrive_and_wait();
      grpc::ClientContext ctx;
      ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(30));
      v1::PredictUncertaintyRequest req = make();
      v1::PredictUncertaintyResponse resp;
      bad[k] = stub_->PredictUncertainty(&ctx, req, &resp);
    });
  };
  send(0, [this] { return UncertaintyRequest("clf", Batch({1, 2, 3}, {1, 3}), 25, 1); });
  send(1, [this] { return UncertaintyRequest("nope", Rows(0, 1), 25, 1); });
  send(2, [this] { return UncertaintyRequest("clf", Rows(0, 1), kMaxSamples + 1, 1); });
  send(3, [this] { return UncertaintyRequest("clf", Batch({1, NAN, 3, 4}, {1, 4}), 25, 1); });
  for (auto& t : threads) t.join();
  EXPECT_CODE(bad[0], grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_CODE(bad[1], grpc::StatusCode::NOT_FOUND);
  EXPECT_CODE(bad[2], grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_CODE(bad[3], grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(bad[0].error_message().find("inputs"), std::string::npos) << Describe(bad[0]);
  EXPECT_NE(bad[1].error_message().find("nope"), std::string::npos) << Describe(bad[1]);
  for (size_t i = 0; i < good.size(); ++i) {
    ASSERT_TRUE(statuses[i].ok()) << i << ": " << Describe(statuses[i]);
    EXPECT_EQ(answers[i], solo[i]) << "call " << i;
  }
  EXPECT_GT(batcher().merged_parts(), batcher().merged_calls());
}

}  // namespace
}  // namespace dropnet::service
