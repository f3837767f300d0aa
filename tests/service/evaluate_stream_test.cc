// EvaluateStream: its result against unary Evaluate's for the same request (bit for bit, eval
// mode and Monte Carlo with a seed, classification and regression), its progress events, its
// errors, and cancellation and deadlines between batches; the client library's EvaluateStream.
#include <gtest/gtest.h>

#include <google/protobuf/util/message_differencer.h>

#include <atomic>
#include <chrono>
#include <string>
#include <thread>
#include <vector>

#include "client/client.h"
#include "tests/service/service_fixture.h"

namespace dropnet::service {
namespace {

using google::protobuf::util::MessageDifferencer;
using grpc::StatusCode;

using StreamRun = ProgressStreamRun<v1::EvaluateEvent::Progress, v1::EvaluateResponse>;

class EvaluateStreamTest : public ServiceTest {
 protected:
  static v1::EvaluateRequest Request(const std::string& model, const std::string& dataset,
                                     int mc_samples = 0, uint64_t seed = 7) {
    v1::EvaluateRequest req;
    req.set_model(model);
    req.set_dataset(dataset);
    if (mc_samples > 0) {
      req.set_mode(v1::EVAL_MODE_MONTE_CARLO);
      req.set_samples(mc_samples);
      req.set_seed(seed);
    }
    return req;
  }

  StreamRun Stream(const v1::EvaluateRequest& req, int deadline_ms = 60'000) {
    return ReadProgressStream<v1::EvaluateEvent, StreamRun>(
        [&](grpc::ClientContext* ctx) { return stub_->EvaluateStream(ctx, req); }, deadline_ms);
  }

  // The stream's result and the unary call's answer to `req`: equal in every field and bit.
  void ExpectSameAsUnary(const v1::EvaluateRequest& req) {
    v1::EvaluateResponse unary;
    ASSERT_OK(Evaluate(req, &unary));
    const StreamRun run = Stream(req);
    ASSERT_OK(run.status);
    ASSERT_EQ(run.results.size(), 1u);
    ASSERT_TRUE(run.result_last);
    const v1::EvaluateResponse& streamed = run.results[0];
    EXPECT_TRUE(MessageDifferencer::Equals(streamed, unary)) << "stream:\n"
                                                             << streamed.DebugString() << "unary:\n"
                                                             << unary.DebugString();
    EXPECT_EQ(streamed.SerializeAsString(), unary.SerializeAsString());
    EXPECT_GT(streamed.rows(), 0);
    EXPECT_EQ(streamed.rows(), run.progress.back().rows_total());
  }
};

TEST_F(EvaluateStreamTest, ResultEqualsUnaryEvaluateBitForBit) {
  StartServer();
  TrainedClassifier(5);
  // 1000 rows: four Monte-Carlo batches of 256 rows and one eval-mode batch.
  ASSERT_OK(UploadRows("clf-big", ClassificationData(1000, 4, 3), v1::TASK_CLASSIFICATION, 500));
  {
    SCOPED_TRACE("eval mode");
    ExpectSameAsUnary(Request("clf", "clf-big"));
  }
  {
    SCOPED_TRACE("Monte Carlo, seed 7");
    ExpectSameAsUnary(Request("clf", "clf-big", 20, 7));
  }
  {
    SCOPED_TRACE("Monte Carlo, limit 300");
    v1::EvaluateRequest req = Request("clf", "clf-big", 10, 11);
    req.set_limit(300);
    ExpectSameAsUnary(req);
  }
  // A different seed gives other numbers: the comparison above can fail.
  v1::EvaluateResponse a, b;
  ASSERT_OK(Evaluate(Request("clf", "clf-big", 20, 7), &a));
  ASSERT_OK(Evaluate(Request("clf", "clf-big", 20, 8), &b));
  EXPECT_NE(a.nll(), b.nll());

  // Regression with standardised targets and a known tau: RMSE and the MC log-likelihood.
  ASSERT_OK(CreateModel("reg", RegressorSpec(4, 5.0)));
  ASSERT_OK(UploadRows("reg-data", RegressionData(600, 4, 2), v1::TASK_REGRESSION, 300));
  v1::TrainRequest train = TrainRequest("reg", "reg-data", 3);
  train.set_standardize(true);
  ASSERT_OK(Train(train));
  {
    SCOPED_TRACE("regression, eval mode");
    ExpectSameAsUnary(Request("reg", "reg-data"));
  }
  {
    SCOPED_TRACE("regression, Monte Carlo");
    ExpectSameAsUnary(Request("reg", "reg-data", 15, 3));
  }
}

TEST_F(EvaluateStreamTest, ProgressIsMonotoneAndEndsAtTheRows) {
  StartServer();
  TrainedClassifier(2);
  ASSERT_OK(UploadRows("clf-big", ClassificationData(1000, 4, 3), v1::TASK_CLASSIFICATION, 500));
  v1::EvaluateRequest req = Request("clf", "clf-big", 10);
  req.clear_seed();
  const StreamRun run = Stream(req);
  ASSERT_OK(run.status);
  ASSERT_TRUE(run.result_last);
  ASSERT_EQ(run.results.size(), 1u);
  // A progress event after every batch of 256 rows.
  ASSERT_EQ(run.progress.size(), 4u);
  int64_t done = 0;
  double elapsed = 0;
  for (const auto& p : run.progress) {
    EXPECT_GT(p.rows_done(), done);
    EXPECT_EQ(p.rows_total(), 1000);
    EXPECT_GE(p.elapsed_seconds(), elapsed);
    done = p.rows_done();
    elapsed = p.elapsed_seconds();
  }
  EXPECT_EQ(run.progress[0].rows_done(), 256);
  EXPECT_EQ(done, 1000);
  const v1::EvaluateResponse& r = run.results[0];
  EXPECT_EQ(r.rows(), 1000);
  EXPECT_EQ(r.mode(), v1::EVAL_MODE_MONTE_CARLO);
  EXPECT_EQ(r.samples(), 10);
  // The seed the server chose reproduces the answer, through either call.
  req.set_seed(r.seed());
  v1::EvaluateResponse unary;
  ASSERT_OK(Evaluate(req, &unary));
  EXPECT_TRUE(MessageDifferencer::Equals(unary, r));

  // Eval mode: one batch, one progress event.
  const StreamRun eval = Stream(Request("clf", "clf-big"));
  ASSERT_OK(eval.status);
  ASSERT_EQ(eval.progress.size(), 1u);
  EXPECT_EQ(eval.progress[0].rows_done(), 1000);
}

TEST_F(EvaluateStreamTest, BadRequestsFailAsEvaluateDoes) {
  StartServer();
  TrainedClassifier(1);
  const auto same_error = [&](const v1::EvaluateRequest& req, StatusCode want,
                              const std::string& words) {
    v1::EvaluateResponse unary;
    const grpc::Status u = Evaluate(req, &unary);
    const StreamRun run = Stream(req);
    EXPECT_CODE(u, want);
    EXPECT_CODE(run.status, want);
    EXPECT_EQ(run.status.error_message(), u.error_message());
    EXPECT_NE(run.status.error_message().find(words), std::string::npos)
        << run.status.error_message();
    EXPECT_TRUE(run.results.empty());
    EXPECT_TRUE(run.progress.empty());
  };
  same_error(Request("clf", "no-such-data"), StatusCode::NOT_FOUND, "no-such-data");
  same_error(Request("nope", "clf-data"), StatusCode::NOT_FOUND, "nope");
  v1::EvaluateRequest limit = Request("clf", "clf-data");
  limit.set_limit(-2);
  same_error(limit, StatusCode::INVALID_ARGUMENT, "limit must be >= 0, got -2");
  same_error(Request("clf", "clf-data", kMaxSamples + 1), StatusCode::RESOURCE_EXHAUSTED,
             "samples 101");
  ASSERT_OK(CreateModel("plain", DeterministicSpec()));
  same_error(Request("plain", "clf-data", 5), StatusCode::FAILED_PRECONDITION,
             "model 'plain' has no stochastic layer");
}

// A data set large enough that evaluating it with T = 100 takes seconds: 4000 rows through
// 8-256-256-3.
class SlowEvaluateStreamTest : public EvaluateStreamTest {
 protected:
  void SetUp() override {
    StartServer();
    ASSERT_OK(CreateModel("slow", SlowSpec()));
    ASSERT_OK(UploadRows("pool", ClassificationData(4000, 8, 5), v1::TASK_CLASSIFICATION, 1000));
  }
  static v1::EvaluateRequest SlowRequest() { return Request("slow", "pool", kMaxSamples); }
  // A small evaluation answers: the server is free again.
  void ExpectServerFree() {
    v1::EvaluateRequest small = SlowRequest();
    small.set_samples(2);
    small.set_limit(64);
    ASSERT_OK(Stream(small, 10'000).status);
  }
};

TEST_F(SlowEvaluateStreamTest, TheDeadlineStopsItBetweenBatches) {
  const auto start = std::chrono::steady_clock::now();
  const StreamRun run = Stream(SlowRequest(), 300);
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  EXPECT_CODE(run.status, StatusCode::DEADLINE_EXCEEDED);
  EXPECT_TRUE(run.results.empty());
  EXPECT_LT(seconds, 3.0);
  ExpectServerFree();
}

TEST_F(SlowEvaluateStreamTest, CancellingStopsItBetweenBatches) {
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(60));
  auto reader = stub_->EvaluateStream(&ctx, SlowRequest());
  v1::EvaluateEvent first;
  ASSERT_TRUE(reader->Read(&first));
  ASSERT_TRUE(first.has_progress());
  EXPECT_EQ(first.progress().rows_done(), 256);
  EXPECT_EQ(first.progress().rows_total(), 4000);
  const auto start = std::chrono::steady_clock::now();
  ctx.TryCancel();
  v1::EvaluateEvent e;
  bool result = false;
  while (reader->Read(&e)) result = result || e.has_result();
  EXPECT_CODE(reader->Finish(), StatusCode::CANCELLED);
  EXPECT_FALSE(result);
  ExpectServerFree();
  EXPECT_LT(std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count(), 3.0);
}

// A shutdown lets a running EvaluateStream (as a running Evaluate) finish within its grace period
// instead of cutting it short.
TEST_F(SlowEvaluateStreamTest, ShutdownLetsARunningStreamFinish) {
  // The fixture's server gives in-flight calls 5 s; this call takes about a second.
  const auto start = std::chrono::steady_clock::now();
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(60));
  auto reader = stub_->EvaluateStream(&ctx, SlowRequest());
  v1::EvaluateEvent e;
  ASSERT_TRUE(reader->Read(&e));
  ASSERT_TRUE(e.has_progress());
  ASSERT_LT(e.progress().rows_done(), 4000);
  std::thread stopper([&] { server_->Shutdown(); });
  int64_t done = e.progress().rows_done();
  bool result = false;
  while (reader->Read(&e)) {
    if (e.has_progress()) done = e.progress().rows_done();
    if (e.has_result()) {
      result = true;
      EXPECT_EQ(e.result().rows(), 4000);
    }
  }
  const grpc::Status status = reader->Finish();
  stopper.join();
  ASSERT_OK(status);
  EXPECT_TRUE(result);
  EXPECT_EQ(done, 4000);
  std::cerr << "evaluated 4000 rows, T = 100, in "
            << std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count()
            << " s\n";
}

// The client library: progress to the callback, the result returned, and `cancel` stopping the
// call with CANCELLED.
TEST_F(SlowEvaluateStreamTest, ClientLibraryReportsProgressAndCancels) {
  client::ClientOptions o;
  o.target = "127.0.0.1:" + std::to_string(server_->port());
  o.deadline = std::chrono::seconds(30);
  client::Client c(o);
  v1::EvaluateRequest small = SlowRequest();
  small.set_samples(2);
  small.set_limit(600);
  std::vector<int64_t> done;
  const v1::EvaluateResponse r = c.EvaluateStream(
      small, [&](const v1::EvaluateEvent::Progress& p) { done.push_back(p.rows_done()); });
  EXPECT_EQ(done, (std::vector<int64_t>{256, 512, 600}));
  EXPECT_EQ(r.rows(), 600);
  v1::EvaluateResponse unary;
  ASSERT_OK(Evaluate(small, &unary));
  EXPECT_TRUE(MessageDifferencer::Equals(unary, r));

  std::atomic<int> events{0};
  try {
    c.EvaluateStream(
        SlowRequest(), [&](const v1::EvaluateEvent::Progress&) { ++events; },
        [&] { return events.load() > 0; });
    ADD_FAILURE() << "the cancelled call answered";
  } catch (const client::ClientError& e) {
    EXPECT_EQ(e.code(), StatusCode::CANCELLED) << e.what();
  }
  EXPECT_LT(events.load(), 4000 / 256);
  ExpectServerFree();
}

}  // namespace
}  // namespace dropnet::service
