// SplitDataset: new stored data sets from fractions, rows shuffled by a seed (reproducible),
// classification stratified, every row in exactly one part, and clear errors.
#include <gtest/gtest.h>

#include <map>
#include <set>
#include <string>
#include <vector>

#include "tests/service/service_fixture.h"

namespace dropnet::service {
namespace {

using grpc::StatusCode;

class SplitTest : public ServiceTest {
 protected:
  grpc::Status Split(const v1::SplitDatasetRequest& req, v1::SplitDatasetResponse* resp) {
    Ctx ctx;
    return stub_->SplitDataset(&ctx, req, resp);
  }
  static v1::SplitDatasetRequest Request(const std::string& name, std::vector<double> fractions,
                                         uint64_t seed) {
    v1::SplitDatasetRequest r;
    r.set_name(name);
    for (double f : fractions) r.add_fractions(f);
    r.set_seed(seed);
    return r;
  }
  // The rows of a stored data set, each as its features followed by its target.
  std::vector<std::vector<float>> Rows(const std::string& name) {
    const auto e = server_->registry().GetDataset(name);
    std::vector<std::vector<float>> rows;
    for (int64_t r = 0; r < e.data->rows(); ++r) {
      std::vector<float> v(e.data->x.row(r).begin(), e.data->x.row(r).end());
      v.push_back(e.data->y(r, 0));
      rows.push_back(v);
    }
    return rows;
  }
};

TEST_F(SplitTest, PartsCoverEveryRowOnceStratifiedAndReproducibly) {
  StartServer();
  const Data d = ClassificationData(300, 4, 3);
  ASSERT_OK(UploadRows("c", d));
  v1::SplitDatasetResponse resp;
  ASSERT_OK(Split(Request("c", {0.8, 0.2}, 5), &resp));
  ASSERT_EQ(resp.datasets_size(), 2);
  EXPECT_EQ(resp.datasets(0).name(), "c-train");
  EXPECT_EQ(resp.datasets(1).name(), "c-test");
  EXPECT_EQ(resp.datasets(0).rows(), 240);
  EXPECT_EQ(resp.datasets(1).rows(), 60);

  const auto all = Rows("c"), train = Rows("c-train"), test = Rows("c-test");
  std::multiset<std::vector<float>> source(all.begin(), all.end()), parts;
  parts.insert(train.begin(), train.end());
  parts.insert(test.begin(), test.end());
  EXPECT_EQ(source, parts);
  // Shuffled: the test part is not the source's last rows.
  EXPECT_NE(test, std::vector<std::vector<float>>(all.end() - 60, all.end()));

  // Stratified: each class's share of the test part is within one row of 20%.
  std::map<float, int> in_all, in_test;
  for (const auto& r : all) ++in_all[r.back()];
  for (const auto& r : test) ++in_test[r.back()];
  ASSERT_GE(in_all.size(), 2u);
  for (const auto& [label, n] : in_all) EXPECT_NEAR(in_test[label], 0.2 * n, 1.0) << label;

  // The same seed gives the same parts; another seed other parts.
  auto again = Request("c", {0.8, 0.2}, 5);
  again.set_overwrite(true);
  ASSERT_OK(Split(again, &resp));
  EXPECT_EQ(Rows("c-test"), test);
  again.set_seed(6);
  ASSERT_OK(Split(again, &resp));
  EXPECT_NE(Rows("c-test"), test);
}

TEST_F(SplitTest, ThreeNamedPartsOfRegressionRows) {
  StartServer();
  ASSERT_OK(UploadRows("r", RegressionData(101, 4, 2), v1::TASK_REGRESSION));
  auto req = Request("r", {0.5, 0.3, 0.2}, 1);
  for (const char* n : {"a", "b", "c"}) req.add_output_names(n);
  v1::SplitDatasetResponse resp;
  ASSERT_OK(Split(req, &resp));
  ASSERT_EQ(resp.datasets_size(), 3);
  EXPECT_NEAR(resp.datasets(0).rows(), 50.5, 1.0);
  EXPECT_NEAR(resp.datasets(1).rows(), 30.3, 1.0);
  EXPECT_EQ(resp.datasets(0).rows() + resp.datasets(1).rows() + resp.datasets(2).rows(), 101);
  EXPECT_EQ(resp.datasets(2).task(), v1::TASK_REGRESSION);
}

TEST_F(SplitTest, BadRequestsAreRefusedAndWriteNothing) {
  StartServer();
  ASSERT_OK(UploadRows("c", ClassificationData(30, 4, 1)));
  v1::SplitDatasetResponse resp;
  EXPECT_CODE(Split(Request("c", {0.8, 0.3}, 1), &resp), StatusCode::INVALID_ARGUMENT);
  EXPECT_CODE(Split(Request("c", {1.0}, 1), &resp), StatusCode::INVALID_ARGUMENT);
  EXPECT_CODE(Split(Request("c", {0.5, -0.5, 1.0}, 1), &resp), StatusCode::INVALID_ARGUMENT);
  EXPECT_CODE(Split(Request("c", {0.99, 0.01}, 1), &resp), StatusCode::INVALID_ARGUMENT);
  EXPECT_CODE(Split(Request("nope", {0.5, 0.5}, 1), &resp), StatusCode::NOT_FOUND);
  auto named = Request("c", {0.5, 0.5}, 1);
  named.add_output_names("only-one");
  EXPECT_CODE(Split(named, &resp), StatusCode::INVALID_ARGUMENT);
  // c-test exists: nothing is written, not even c-train.
  ASSERT_OK(UploadRows("c-test", ClassificationData(10, 4, 2)));
  EXPECT_CODE(Split(Request("c", {0.5, 0.5}, 1), &resp), StatusCode::ALREADY_EXISTS);
  for (const auto& info : ListDatasets()) EXPECT_NE(info.name(), "c-train");
}

}  // namespace
}  // namespace dropnet::service
