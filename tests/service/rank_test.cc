// RankDataset: its ranking against PredictUncertainty's numbers for the same rows, seed and T,
// its progress events, its errors, and cancellation and deadlines between batches.
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <map>
#include <numeric>
#include <vector>

#include "tests/service/service_fixture.h"

namespace dropnet::service {
namespace {

using grpc::StatusCode;

using RankRun = ProgressStreamRun<v1::RankProgress, v1::RankResult>;

class RankTest : public ServiceTest {
 protected:
  v1::RankDatasetRequest Request(const std::string& model, const std::string& dataset,
                                 v1::RankCriterion criterion, int64_t top_k) {
    v1::RankDatasetRequest req;
    req.set_model(model);
    req.set_dataset(dataset);
    req.set_criterion(criterion);
    req.set_top_k(top_k);
    req.set_samples(20);
    req.set_seed(7);
    return req;
  }

  RankRun Rank(const v1::RankDatasetRequest& req, int deadline_ms = 60'000) {
    return ReadProgressStream<v1::RankEvent, RankRun>(
        [&](grpc::ClientContext* ctx) { return stub_->RankDataset(ctx, req); }, deadline_ms);
  }

  // PredictUncertainty over the data set in requests of `batch` rows: every row's answer, with
  // the same seed and T.
  std::vector<v1::PredictUncertaintyResponse> UncertaintyByBatch(const Data& d, int64_t batch) {
    std::vector<v1::PredictUncertaintyResponse> out;
    for (int64_t r0 = 0; r0 < d.rows; r0 += batch) {
      const int64_t n = std::min(batch, d.rows - r0);
      std::vector<float> v(d.x.begin() + r0 * d.width, d.x.begin() + (r0 + n) * d.width);
      v1::PredictUncertaintyResponse resp;
      EXPECT_TRUE(
          Uncertainty(UncertaintyRequest("clf", Batch(v, {n, d.width}), 20, 7), &resp).ok());
      out.push_back(resp);
    }
    return out;
  }
};

float ExpectedScore(const v1::PredictUncertaintyResponse& r, int i, v1::RankCriterion c) {
  switch (c) {
    case v1::RANK_CRITERION_ENTROPY:
      return r.predictive_entropy(i);
    case v1::RANK_CRITERION_VARIATION_RATIO:
      return r.variation_ratio(i);
    case v1::RANK_CRITERION_MARGIN: {
      const int classes = static_cast<int>(r.mean().shape(1));
      std::vector<float> p(r.mean().values().begin() + i * classes,
                           r.mean().values().begin() + (i + 1) * classes);
      std::sort(p.rbegin(), p.rend());
      return p[0] - p[1];
    }
    default:
      return r.mutual_information(i);
  }
}

TEST_F(RankTest, ScoresAreThoseOfPredictUncertaintyBestFirst) {
  StartServer();
  TrainedClassifier(5);
  const Data d = ClassificationData(240, 4, 1);  // the rows of "clf-data"
  const int64_t batch = 50;                      // 240 rows: four batches of 50 and one of 40
  // A row's answer does not depend on the rows beside it: PredictUncertainty in requests of 37
  // rows, not in the ranking's batches, gives the same scores.
  const int64_t request_rows = 37;
  const auto answers = UncertaintyByBatch(d, request_rows);
  for (auto c : {v1::RANK_CRITERION_MUTUAL_INFORMATION, v1::RANK_CRITERION_ENTROPY,
                 v1::RANK_CRITERION_VARIATION_RATIO, v1::RANK_CRITERION_MARGIN}) {
    SCOPED_TRACE(v1::RankCriterion_Name(c));
    v1::RankDatasetRequest req = Request("clf", "clf-data", c, 1000);  // more than the rows
    req.set_batch_size(batch);
    const RankRun all = Rank(req);
    ASSERT_OK(all.status);
    ASSERT_EQ(all.results.size(), 1u);
    ASSERT_TRUE(all.result_last);
    const v1::RankResult& r = all.results[0];
    EXPECT_EQ(r.rows(), 240);
    EXPECT_EQ(r.criterion(), c);
    EXPECT_EQ(r.samples(), 20);
    EXPECT_EQ(r.seed(), 7u);
    EXPECT_EQ(r.batch_size(), batch);
    EXPECT_EQ(r.version(), GetModel("clf").version());
    ASSERT_EQ(r.indices_size(), 240);  // top_k past the rows: every row, ranked
    std::vector<int64_t> seen(r.indices().begin(), r.indices().end());
    std::sort(seen.begin(), seen.end());
    std::vector<int64_t> every(240);
    std::iota(every.begin(), every.end(), 0);
    EXPECT_EQ(seen, every);
    for (int i = 0; i < r.indices_size(); ++i) {
      const int64_t row = r.indices(i);
      const auto& u = answers[row / request_rows];
      const int at = static_cast<int>(row % request_rows);
      ASSERT_EQ(r.scores(i), ExpectedScore(u, at, c)) << "row " << row;  // bit for bit
      EXPECT_EQ(r.predicted_class(i), u.predicted_class(at));
      if (i == 0) continue;
      // Best first: descending, margin ascending, ties in row order.
      const float prev = r.scores(i - 1), cur = r.scores(i);
      if (c == v1::RANK_CRITERION_MARGIN) {
        EXPECT_LE(prev, cur);
      } else {
        EXPECT_GE(prev, cur);
      }
      if (prev == cur) {
        EXPECT_LT(r.indices(i - 1), row);
      }
    }
    // A smaller K keeps the head of the same ranking (the heap against the full sort).
    req.set_top_k(7);
    const RankRun top = Rank(req);
    ASSERT_OK(top.status);
    ASSERT_EQ(top.results.size(), 1u);
    ASSERT_EQ(top.results[0].indices_size(), 7);
    for (int i = 0; i < 7; ++i) {
      EXPECT_EQ(top.results[0].indices(i), r.indices(i));
      EXPECT_EQ(top.results[0].scores(i), r.scores(i));
    }
  }
}

TEST_F(RankTest, ProgressCountsRowsAndTheResultComesLast) {
  StartServer();
  TrainedClassifier(2);
  v1::RankDatasetRequest req = Request("clf", "clf-data", v1::RANK_CRITERION_UNSPECIFIED, 3);
  req.clear_seed();
  req.clear_samples();
  const RankRun run = Rank(req);
  ASSERT_OK(run.status);
  ASSERT_TRUE(run.result_last);
  ASSERT_FALSE(run.progress.empty());
  int64_t done = 0;
  for (const auto& p : run.progress) {
    EXPECT_GT(p.rows_done(), done);
    EXPECT_EQ(p.rows_total(), 240);
    done = p.rows_done();
  }
  EXPECT_EQ(done, 240);
  const v1::RankResult& r = run.results.at(0);
  EXPECT_EQ(r.criterion(), v1::RANK_CRITERION_MUTUAL_INFORMATION);  // the default
  EXPECT_EQ(r.samples(), kDefaultSamples);
  EXPECT_EQ(r.batch_size(), kMaxBatchRows);  // 256, capped by the server's largest batch
  EXPECT_EQ(r.indices_size(), 3);
  // The seed the server chose reproduces the ranking.
  req.set_seed(r.seed());
  const RankRun again = Rank(req);
  ASSERT_OK(again.status);
  EXPECT_EQ(std::vector<int64_t>(again.results.at(0).indices().begin(),
                                 again.results.at(0).indices().end()),
            std::vector<int64_t>(r.indices().begin(), r.indices().end()));
}

TEST_F(RankTest, BadRequestsNameTheFieldAndValue) {
  StartServer();
  TrainedClassifier(1);
  const auto code_of = [&](const v1::RankDatasetRequest& req, StatusCode want,
                           const std::string& words) {
    const RankRun run = Rank(req);
    EXPECT_CODE(run.status, want);
    EXPECT_NE(run.status.error_message().find(words), std::string::npos)
        << run.status.error_message();
    EXPECT_TRUE(run.results.empty());
  };
  code_of(Request("clf", "no-such-data", v1::RANK_CRITERION_ENTROPY, 5), StatusCode::NOT_FOUND,
          "no-such-data");
  code_of(Request("nope", "clf-data", v1::RANK_CRITERION_ENTROPY, 5), StatusCode::NOT_FOUND,
          "nope");
  code_of(Request("clf", "clf-data", v1::RANK_CRITERION_ENTROPY, 0), StatusCode::INVALID_ARGUMENT,
          "top_k must be positive, got 0");
  code_of(Request("clf", "clf-data", v1::RANK_CRITERION_ENTROPY, -3), StatusCode::INVALID_ARGUMENT,
          "got -3");
  code_of(Request("clf", "clf-data", static_cast<v1::RankCriterion>(42), 5),
          StatusCode::INVALID_ARGUMENT, "criterion 42 is unknown");
  v1::RankDatasetRequest big = Request("clf", "clf-data", v1::RANK_CRITERION_ENTROPY, 5);
  big.set_batch_size(kMaxBatchRows + 1);
  code_of(big, StatusCode::INVALID_ARGUMENT, "batch_size must be in [0, 64], got 65");
  v1::RankDatasetRequest many = Request("clf", "clf-data", v1::RANK_CRITERION_ENTROPY, 5);
  many.set_samples(kMaxSamples + 1);
  code_of(many, StatusCode::RESOURCE_EXHAUSTED, "samples 101");
  many.set_samples(-1);
  code_of(many, StatusCode::INVALID_ARGUMENT, "samples must be positive, got -1");

  ASSERT_OK(UploadRows("wide", ClassificationData(10, 6, 2)));
  code_of(Request("clf", "wide", v1::RANK_CRITERION_ENTROPY, 5), StatusCode::INVALID_ARGUMENT,
          "data set 'wide' has 6 features per row, model 'clf' expects 4");

  ASSERT_OK(CreateModel("reg", RegressorSpec()));
  ASSERT_OK(UploadRows("reg-data", RegressionData(20, 4, 1), v1::TASK_REGRESSION));
  code_of(Request("reg", "reg-data", v1::RANK_CRITERION_ENTROPY, 5),
          StatusCode::FAILED_PRECONDITION, "model 'reg' is a regression model");

  ASSERT_OK(CreateModel("plain", DeterministicSpec()));
  code_of(Request("plain", "clf-data", v1::RANK_CRITERION_ENTROPY, 5),
          StatusCode::FAILED_PRECONDITION, "model 'plain' has no stochastic layer");
}

// A data set large enough that ranking it takes seconds: 4000 rows through 8-256-256-3, T = 100.
class SlowRankTest : public RankTest {
 protected:
  void SetUp() override {
    StartServer();
    ASSERT_OK(CreateModel("slow", SlowSpec()));
    ASSERT_OK(UploadRows("pool", ClassificationData(4000, 8, 5), v1::TASK_CLASSIFICATION, 1000));
  }
  v1::RankDatasetRequest SlowRequest() {
    v1::RankDatasetRequest req = Request("slow", "pool", v1::RANK_CRITERION_MUTUAL_INFORMATION, 10);
    req.set_samples(kMaxSamples);
    return req;
  }
};

TEST_F(SlowRankTest, TheDeadlineStopsItBetweenBatches) {
  const auto start = std::chrono::steady_clock::now();
  const RankRun run = Rank(SlowRequest(), 300);
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  EXPECT_CODE(run.status, StatusCode::DEADLINE_EXCEEDED);
  EXPECT_TRUE(run.results.empty());
  EXPECT_LT(seconds, 3.0);
  // The server is free again: a small ranking answers.
  v1::RankDatasetRequest small = SlowRequest();
  small.set_samples(2);
  small.set_batch_size(64);
  ASSERT_OK(Rank(small).status);
}

TEST_F(SlowRankTest, CancellingStopsItBetweenBatches) {
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(60));
  auto reader = stub_->RankDataset(&ctx, SlowRequest());
  v1::RankEvent first;
  ASSERT_TRUE(reader->Read(&first));
  ASSERT_TRUE(first.has_progress());
  EXPECT_LT(first.progress().rows_done(), 4000);
  const auto start = std::chrono::steady_clock::now();
  ctx.TryCancel();
  v1::RankEvent e;
  bool result = false;
  while (reader->Read(&e)) result = result || e.has_result();
  EXPECT_CODE(reader->Finish(), StatusCode::CANCELLED);
  EXPECT_FALSE(result);
  // The server stopped computing: a second call gets a worker within a batch's time.
  v1::RankDatasetRequest small = SlowRequest();
  small.set_samples(2);
  ASSERT_OK(Rank(small, 10'000).status);
  EXPECT_LT(std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count(), 3.0);
}

}  // namespace
}  // namespace dropnet::service
