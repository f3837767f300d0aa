// Tests for model versions served by a real server: pinning a version by number or label,
// labels and the serving label, their survival across a restart, retention, the history file's
// linear growth, corrupt versions reported by GetModel, and ListModels paging.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <map>
#include <string>
#include <vector>

#include "server/service/convert.h"
#include "server/service/store.h"
#include "tests/service/service_fixture.h"

namespace dropnet::service {
namespace {

namespace fs = std::filesystem;

class VersionsTest : public ServiceTest {
 protected:
  grpc::Status Label(const std::string& model, const std::string& label, int64_t version,
                     v1::ModelInfo* info = nullptr) {
    v1::SetVersionLabelRequest req;
    req.set_model(model);
    req.set_label(label);
    req.set_version(version);
    v1::SetVersionLabelResponse resp;
    Ctx ctx;
    grpc::Status s = stub_->SetVersionLabel(&ctx, req, &resp);
    if (info) *info = resp.model();
    return s;
  }
  grpc::Status Unlabel(const std::string& model, const std::string& label) {
    v1::RemoveVersionLabelRequest req;
    req.set_model(model);
    req.set_label(label);
    v1::RemoveVersionLabelResponse resp;
    Ctx ctx;
    return stub_->RemoveVersionLabel(&ctx, req, &resp);
  }
  grpc::Status SetServingLabel(const std::string& model, const std::string& label) {
    v1::UpdateModelRequest req;
    req.set_model(model);
    req.set_serving_label(label);
    v1::UpdateModelResponse resp;
    Ctx ctx;
    return stub_->UpdateModel(&ctx, req, &resp);
  }
  grpc::Status PredictAt(const std::string& model, const std::string& version,
                         v1::PredictResponse* resp) {
    v1::PredictRequest req;
    req.set_model(model);
    req.set_version(version);
    *req.mutable_inputs() = RowsOf(ClassificationData(8, 4, 3), 8);
    Ctx ctx;
    return stub_->Predict(&ctx, req, resp);
  }
  grpc::Status UncertaintyAt(const std::string& model, const std::string& version,
                             v1::PredictUncertaintyResponse* resp) {
    auto req = UncertaintyRequest(model, RowsOf(ClassificationData(8, 4, 3), 8), 20, 99);
    req.set_version(version);
    return Uncertainty(req, resp);
  }
  grpc::Status CreateWith(const std::string& name, const std::string& serving_label,
                          int keep_versions) {
    v1::CreateModelRequest req;
    req.set_name(name);
    *req.mutable_spec() = ClassifierSpec();
    req.set_serving_label(serving_label);
    req.set_keep_versions(keep_versions);
    v1::CreateModelResponse resp;
    Ctx ctx;
    return stub_->CreateModel(&ctx, req, &resp);
  }
  static std::map<int64_t, const v1::VersionInfo*> Details(const v1::ModelInfo& m) {
    std::map<int64_t, const v1::VersionInfo*> out;
    for (const auto& d : m.version_details()) out[d.version()] = &d;
    return out;
  }
};

TEST_F(VersionsTest, PinnedVersionAnswersBitIdenticallyAfterMoreTraining) {
  ServerConfig config = Config();
  config.service.cached_versions = 1;  // the old version is read from the store again
  StartServer(config);
  TrainedClassifier(3);  // versions 1-4
  v1::PredictResponse before, after, newest;
  v1::PredictUncertaintyResponse mc_before, mc_after;
  ASSERT_OK(PredictAt("clf", "3", &before));
  ASSERT_OK(UncertaintyAt("clf", "3", &mc_before));
  EXPECT_EQ(before.version(), 3);
  EXPECT_EQ(mc_before.version(), 3);
  ASSERT_OK(Train(TrainRequest("clf", "clf-data", 2)));  // versions 5, 6
  ASSERT_OK(PredictAt("clf", "", &newest));
  EXPECT_EQ(newest.version(), 6);
  EXPECT_FALSE(SameBits(newest.outputs(), before.outputs()));
  ASSERT_OK(PredictAt("clf", "4", &after));  // another version in the cache
  ASSERT_OK(PredictAt("clf", "3", &after));
  ASSERT_OK(UncertaintyAt("clf", "3", &mc_after));
  EXPECT_EQ(after.version(), 3);
  EXPECT_TRUE(SameBits(before.outputs(), after.outputs()));
  EXPECT_TRUE(SameBits(mc_before.mean(), mc_after.mean()));
  EXPECT_TRUE(SameBits(mc_before.stddev(), mc_after.stddev()));
  // Evaluate takes a version too.
  v1::EvaluateRequest ereq;
  ereq.set_model("clf");
  ereq.set_dataset("clf-data");
  ereq.set_version("3");
  v1::EvaluateResponse eval;
  ASSERT_OK(Evaluate(ereq, &eval));
  EXPECT_EQ(eval.version(), 3);
  // Unknown and malformed versions.
  EXPECT_CODE(PredictAt("clf", "99", &after), grpc::StatusCode::NOT_FOUND);
  EXPECT_CODE(PredictAt("clf", "nolabel", &after), grpc::StatusCode::NOT_FOUND);
  EXPECT_CODE(PredictAt("clf", "99999999999999999999", &after), grpc::StatusCode::INVALID_ARGUMENT);
}

TEST_F(VersionsTest, LabelsSetMoveRemoveAndServeByDefault) {
  StartServer();
  TrainedClassifier(3);  // versions 1-4
  v1::ModelInfo info;
  ASSERT_OK(Label("clf", "stable", 2, &info));
  EXPECT_EQ(info.labels().at("stable"), 2);
  v1::PredictResponse r;
  ASSERT_OK(PredictAt("clf", "stable", &r));
  EXPECT_EQ(r.version(), 2);
  ASSERT_OK(Label("clf", "stable", 3));  // moved
  ASSERT_OK(PredictAt("clf", "stable", &r));
  EXPECT_EQ(r.version(), 3);
  ASSERT_OK(PredictAt("clf", "", &r));
  EXPECT_EQ(r.version(), 4);  // no serving label: the newest
  // Serving the label: calls without a version get it, and training does not change that.
  ASSERT_OK(SetServingLabel("clf", "stable"));
  ASSERT_OK(PredictAt("clf", "", &r));
  EXPECT_EQ(r.version(), 3);
  ASSERT_OK(Train(TrainRequest("clf", "clf-data", 1)));  // version 5
  ASSERT_OK(PredictAt("clf", "", &r));
  EXPECT_EQ(r.version(), 3);
  EXPECT_EQ(GetModel("clf").version(), 3);
  EXPECT_EQ(GetModel("clf").newest_version(), 5);
  ASSERT_OK(Label("clf", "stable", 5));  // promotion
  ASSERT_OK(PredictAt("clf", "", &r));
  EXPECT_EQ(r.version(), 5);
  ASSERT_OK(Label("clf", "stable", 3));  // roll back
  ASSERT_OK(PredictAt("clf", "", &r));
  EXPECT_EQ(r.version(), 3);
  // The serving label cannot be removed; another can, and is gone.
  EXPECT_CODE(Unlabel("clf", "stable"), grpc::StatusCode::FAILED_PRECONDITION);
  ASSERT_OK(Label("clf", "canary", 5));
  ASSERT_OK(Unlabel("clf", "canary"));
  EXPECT_CODE(PredictAt("clf", "canary", &r), grpc::StatusCode::NOT_FOUND);
  EXPECT_CODE(Unlabel("clf", "canary"), grpc::StatusCode::NOT_FOUND);
  // Bad labels and versions.
  EXPECT_CODE(Label("clf", "12", 3), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_CODE(Label("clf", "bad label", 3), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_CODE(Label("clf", "x", 42), grpc::StatusCode::NOT_FOUND);
  EXPECT_CODE(SetServingLabel("clf", "nosuch"), grpc::StatusCode::FAILED_PRECONDITION);
  // Back to the newest.
  ASSERT_OK(SetServingLabel("clf", ""));
  ASSERT_OK(PredictAt("clf", "", &r));
  EXPECT_EQ(r.version(), 5);
}

TEST_F(VersionsTest, ServingLabelGivenAtCreateKeepsTrainingFromChangingAnswers) {
  StartServer();
  ASSERT_OK(CreateWith("prod", "stable", 0));
  ASSERT_OK(UploadRows("prod-data", ClassificationData(240, 4, 1)));
  ASSERT_OK(Train(TrainRequest("prod", "prod-data", 2)));
  v1::PredictResponse r;
  ASSERT_OK(PredictAt("prod", "", &r));
  EXPECT_EQ(r.version(), 1);
  const auto info = GetModel("prod");
  EXPECT_EQ(info.serving_label(), "stable");
  EXPECT_EQ(info.newest_version(), 3);
  EXPECT_CODE(CreateWith("bad", "1abc", 0), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_CODE(CreateWith("bad", "", -1), grpc::StatusCode::INVALID_ARGUMENT);
}

TEST_F(VersionsTest, RestartKeepsLabelsAndServingLabel) {
  StartServer();
  TrainedClassifier(3);
  ASSERT_OK(Label("clf", "stable", 2));
  ASSERT_OK(Label("clf", "canary", 4));
  ASSERT_OK(SetServingLabel("clf", "stable"));
  StartServer();  // a new server on the same store
  const auto info = GetModel("clf");
  EXPECT_EQ(info.labels().at("stable"), 2);
  EXPECT_EQ(info.labels().at("canary"), 4);
  EXPECT_EQ(info.serving_label(), "stable");
  EXPECT_EQ(info.history_size(), 3);
  v1::PredictResponse r;
  ASSERT_OK(PredictAt("clf", "", &r));
  EXPECT_EQ(r.version(), 2);
  ASSERT_OK(PredictAt("clf", "canary", &r));
  EXPECT_EQ(r.version(), 4);
}

TEST_F(VersionsTest, RetentionKeepsNewestLabelledAndBestAndDeletesTheRest) {
  ServerConfig config = Config();
  config.service.keep_versions = 3;
  StartServer(config);
  ASSERT_OK(CreateModel("clf", ClassifierSpec()));
  ASSERT_OK(UploadRows("clf-data", ClassificationData(240, 4, 1, /*random_labels=*/true)));
  ASSERT_OK(Label("clf", "first", 1));
  auto req = TrainRequest("clf", "clf-data", 10);
  req.set_validation_split(0.25);
  ASSERT_OK(Train(req));  // versions 2-11
  const auto info = GetModel("clf");
  // The best by validation accuracy, from the history.
  int64_t best = 0;
  double best_metric = -1;
  for (const auto& h : info.history()) {
    if (h.val_metric() > best_metric) best = h.version(), best_metric = h.val_metric();
  }
  std::vector<int64_t> expected = {1, 9, 10, 11};
  if (best < 9) expected.insert(expected.begin() + 1, best);
  EXPECT_EQ(std::vector<int64_t>(info.versions().begin(), info.versions().end()), expected);
  const fs::path model_dir = dir_.path() / "store" / "models" / "clf";
  int dirs = 0;
  for (const auto& e : fs::directory_iterator(model_dir)) dirs += e.is_directory();
  EXPECT_EQ(dirs, static_cast<int>(expected.size()));
  auto details = Details(info);
  EXPECT_TRUE(details.at(best)->best());
  ASSERT_EQ(details.at(1)->labels_size(), 1);
  EXPECT_EQ(details.at(1)->labels(0), "first");
  EXPECT_GT(details.at(11)->size_bytes(), 0);
  EXPECT_TRUE(details.at(11)->has_epoch());
  EXPECT_EQ(details.at(11)->epoch().epoch(), 10);
  v1::PredictResponse r;
  EXPECT_CODE(PredictAt("clf", "5", &r),
              best == 5 ? grpc::StatusCode::OK : grpc::StatusCode::NOT_FOUND);
  // A per-model setting overrides the server's.
  v1::UpdateModelRequest u;
  u.set_model("clf");
  u.set_keep_versions(1);
  v1::UpdateModelResponse ur;
  Ctx ctx;
  ASSERT_OK(stub_->UpdateModel(&ctx, u, &ur));
  ASSERT_OK(Train(TrainRequest("clf", "clf-data", 1)));  // version 12
  const auto after = GetModel("clf");
  int64_t best_after = 0;
  best_metric = -1;
  for (const auto& h : after.history()) {
    if (h.val_metric() > best_metric) best_after = h.version(), best_metric = h.val_metric();
  }
  std::vector<int64_t> kept = {1, best_after, 12};
  if (best_after == 12) kept = {1, 12};
  EXPECT_EQ(std::vector<int64_t>(after.versions().begin(), after.versions().end()), kept);
}

// Each epoch adds its own checkpoint and one history record, so the store grows linearly with
// the epochs: 400 epochs stay within a few times one version's size.
TEST_F(VersionsTest, StoreGrowsLinearlyWithEpochs) {
  StartServer();
  ASSERT_OK(CreateModel("clf", ClassifierSpec()));
  ASSERT_OK(UploadRows("clf-data", ClassificationData(32, 4, 1)));
  auto req = TrainRequest("clf", "clf-data", 400, 32);
  ASSERT_OK(Train(req));
  const auto info = GetModel("clf");
  EXPECT_EQ(info.history_size(), 400);
  EXPECT_EQ(info.versions_size(), 5);
  int64_t total = 0;
  for (const auto& e : fs::recursive_directory_iterator(dir_.path() / "store" / "models")) {
    if (e.is_regular_file()) total += static_cast<int64_t>(e.file_size());
  }
  int64_t version_bytes = 0;
  for (const auto& d : info.version_details())
    version_bytes = std::max(version_bytes, d.size_bytes());
  const fs::path history = dir_.path() / "store" / "models" / "clf" / "history.log";
  const int64_t history_bytes = static_cast<int64_t>(fs::file_size(history));
  std::printf("400 epochs: store %lld bytes (one version %lld, history %lld)\n",
              static_cast<long long>(total), static_cast<long long>(version_bytes),
              static_cast<long long>(history_bytes));
  EXPECT_LT(history_bytes, 400 * 200);  // about 100 bytes an epoch
  EXPECT_LT(total, 6 * version_bytes + history_bytes + 4096);
  // The history survives a restart whole.
  StartServer();
  EXPECT_EQ(GetModel("clf").history_size(), 400);
  EXPECT_EQ(GetModel("clf").history(399).epoch(), 400);
}

// A store written before the history file: each checkpoint embeds the history so far. Its
// history is read and moved into the history file (retention may then delete the checkpoints
// that held it); new epochs go to the history file, not into the checkpoints.
TEST_F(VersionsTest, CheckpointsThatEmbedHistoryAreStillRead) {
  {
    ModelStore store(dir_.path() / "store", true);
    auto snap = NewSnapshot("old", ClassifierSpec(), SpecLimits{});
    for (int v = 1; v <= 3; ++v) {
      snap->version = v;
      if (v > 1) {
        v1::EpochRecord rec;
        rec.set_epoch(v - 1);
        rec.set_version(v);
        rec.set_loss(1.0 / v);
        snap->history.push_back(rec);
      }
      v1::Checkpoint c;
      ToCheckpoint(*snap, &c);
      store.SaveCheckpoint(c);
    }
  }
  StartServer();
  auto info = GetModel("old");
  ASSERT_EQ(info.history_size(), 2);
  EXPECT_EQ(info.history(1).version(), 3);
  ASSERT_OK(UploadRows("old-data", ClassificationData(64, 4, 1)));
  ASSERT_OK(Train(TrainRequest("old", "old-data", 1)));
  info = GetModel("old");
  ASSERT_EQ(info.history_size(), 3);
  EXPECT_EQ(info.history(2).epoch(), 3);
  EXPECT_EQ(info.history(2).version(), 4);
  StopServer();
  ModelStore store(dir_.path() / "store", false);
  EXPECT_EQ(store.LoadCheckpoint("old", 4).history_size(), 0);
  EXPECT_EQ(store.LoadHistory("old").size(), 3u);
  StartServer();
  EXPECT_EQ(GetModel("old").history_size(), 3);
}

TEST_F(VersionsTest, CorruptVersionIsReportedAndNeverServed) {
  StartServer();
  TrainedClassifier(2);  // versions 1-3
  ASSERT_OK(Label("clf", "stable", 2));
  ASSERT_OK(SetServingLabel("clf", "stable"));
  StopServer();
  const fs::path file = dir_.path() / "store" / "models" / "clf" / "2" / "checkpoint.pb";
  {
    std::fstream f(file, std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(100);
    f.put('\x5a');
    f.put('\xa5');
  }
  StartServer();
  const auto info = GetModel("clf");
  const auto details = Details(info);
  ASSERT_EQ(details.size(), 3u);
  EXPECT_EQ(details.at(2)->status(), v1::VersionInfo::STATUS_CORRUPT);
  EXPECT_NE(details.at(2)->error().find("checksum"), std::string::npos) << details.at(2)->error();
  EXPECT_EQ(details.at(1)->status(), v1::VersionInfo::STATUS_OK);
  EXPECT_EQ(details.at(3)->status(), v1::VersionInfo::STATUS_OK);
  // The serving label names the corrupt version: GetModel still answers and says so, calls
  // without a version fail with DATA_LOSS until the label moves.
  EXPECT_EQ(info.version(), 2);
  v1::PredictResponse r;
  EXPECT_CODE(PredictAt("clf", "", &r), grpc::StatusCode::DATA_LOSS);
  EXPECT_EQ(ListModels().size(), 1u);
  EXPECT_CODE(PredictAt("clf", "2", &r), grpc::StatusCode::DATA_LOSS);
  EXPECT_CODE(Label("clf", "canary", 2), grpc::StatusCode::FAILED_PRECONDITION);
  ASSERT_OK(PredictAt("clf", "1", &r));
  ASSERT_OK(Label("clf", "stable", 3));  // roll forward past it
  ASSERT_OK(PredictAt("clf", "", &r));
  EXPECT_EQ(r.version(), 3);
}

TEST_F(VersionsTest, ListModelsPagesAndDescriptionIsBounded) {
  StartServer();
  for (int i = 0; i < 5; ++i) ASSERT_OK(CreateModel("m" + std::to_string(i), ClassifierSpec()));
  std::vector<std::string> seen;
  std::string token;
  int pages = 0;
  do {
    v1::ListModelsRequest req;
    req.set_page_size(2);
    req.set_page_token(token);
    v1::ListModelsResponse resp;
    Ctx ctx;
    ASSERT_OK(stub_->ListModels(&ctx, req, &resp));
    EXPECT_LE(resp.models_size(), 2);
    for (const auto& m : resp.models()) seen.push_back(m.name());
    token = resp.next_page_token();
    ++pages;
  } while (!token.empty() && pages < 10);
  EXPECT_EQ(pages, 3);
  EXPECT_EQ(seen, (std::vector<std::string>{"m0", "m1", "m2", "m3", "m4"}));
  v1::ListModelsRequest bad;
  bad.set_page_size(-1);
  v1::ListModelsResponse resp;
  Ctx ctx;
  EXPECT_CODE(stub_->ListModels(&ctx, bad, &resp), grpc::StatusCode::INVALID_ARGUMENT);
  auto spec = ClassifierSpec();
  spec.set_description(std::string(5000, 'x'));
  EXPECT_CODE(CreateModel("long", spec), grpc::StatusCode::INVALID_ARGUMENT);
}

}  // namespace
}  // namespace dropnet::service
