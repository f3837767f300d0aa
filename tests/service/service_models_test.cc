// In-process tests of the dropnet.v1.Dropnet service's models and data sets on their success
// paths: creating, describing, listing and deleting models, and uploading (rows and CSV),
// importing (CSV and gzipped IDX), listing and deleting data sets.
#include <gtest/gtest.h>

#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include <google/protobuf/util/message_differencer.h>

#include "tests/service/service_fixture.h"

namespace dropnet::service {
namespace {

namespace fs = std::filesystem;
using google::protobuf::util::MessageDifferencer;
using grpc::StatusCode;

// ---- Models ----

// `header`, then `rows` CSV rows of ClassificationData(rows, 4, 5) whose class is a name: emu, cat
// and dog for classes 0, 1 and 2 (so the server's sorted indices are cat 0, dog 1, emu 2); gives
// the rows.
Data NamedClassCsv(const std::string& header, int64_t rows, std::string* csv) {
  *csv = header + "\n";
  const Data d = ClassificationData(rows, 4, 5);
  const char* names[3] = {"emu", "cat", "dog"};
  for (int64_t r = 0; r < d.rows; ++r) {
    for (int c = 0; c < 4; ++c) *csv += std::to_string(d.x[r * 4 + c]) + ",";
    *csv += names[static_cast<int>(d.y[r])];
    *csv += "\n";
  }
  return d;
}

TEST_F(ServiceTest, CreateModelPublishesVersionOne) {
  StartServer();
  v1::CreateModelResponse resp;
  v1::ModelSpec spec = ClassifierSpec();
  spec.set_description("a small classifier");
  ASSERT_OK(CreateModel("m1", spec, &resp));
  const v1::ModelInfo& m = resp.model();
  EXPECT_EQ(m.name(), "m1");
  EXPECT_EQ(m.version(), 1);
  EXPECT_EQ(std::vector<int64_t>(m.versions().begin(), m.versions().end()),
            std::vector<int64_t>{1});
  EXPECT_EQ(m.parameter_count(), ClassifierParameters(4));
  EXPECT_EQ(m.output_size(), 3);
  EXPECT_FALSE(m.training());
  EXPECT_EQ(m.history_size(), 0);
  EXPECT_EQ(m.steps(), 0);
  EXPECT_GT(m.created_unix_ms(), 0);
  EXPECT_TRUE(MessageDifferencer::Equals(m.spec(), spec));
  EXPECT_TRUE(fs::exists(dir_.path() / "store" / "models" / "m1" / "1" / "checkpoint.pb"));
}

TEST_F(ServiceTest, GetModelReportsSpecVersionsAndHistory) {
  StartServer();
  ASSERT_OK(CreateModel("m", ClassifierSpec()));
  ASSERT_OK(UploadRows("d", ClassificationData(96, 4, 2)));
  ASSERT_OK(Train(TrainRequest("m", "d", 2, 32)));
  const v1::ModelInfo m = GetModel("m");
  EXPECT_EQ(m.name(), "m");
  EXPECT_TRUE(MessageDifferencer::Equals(m.spec(), ClassifierSpec()));
  EXPECT_EQ(m.parameter_count(), ClassifierParameters(4));
  EXPECT_EQ(m.version(), 3);
  EXPECT_EQ(std::vector<int64_t>(m.versions().begin(), m.versions().end()),
            (std::vector<int64_t>{1, 2, 3}));
  ASSERT_EQ(m.history_size(), 2);
  EXPECT_EQ(m.history(0).epoch(), 1);
  EXPECT_EQ(m.history(0).version(), 2);
  EXPECT_EQ(m.history(1).epoch(), 2);
  EXPECT_EQ(m.history(1).version(), 3);
  EXPECT_EQ(m.history(1).dataset(), "d");
  EXPECT_GT(m.history(0).loss(), 0);
  EXPECT_EQ(m.steps(), 6);  // 96 rows in batches of 32, twice
  EXPECT_FALSE(m.training());
}

TEST_F(ServiceTest, GetModelReportsRateRangesAndPrunedFractions) {
  StartServer();
  // input [4] -> concrete_dropout per unit (dense 6) -> sparse_vd 3.
  v1::ModelSpec spec;
  spec.add_input_shape(4);
  v1::LayerSpec* concrete = AddLayer(&spec, "concrete_dropout", 6);
  concrete->set_per_unit(true);
  concrete->set_init_rate(0.2);
  AddLayer(&spec, "sparse_vd", 3);
  ASSERT_OK(CreateModel("learned", spec));
  const v1::ModelInfo m = GetModel("learned");
  ASSERT_EQ(m.learned_rate_ranges_size(), 2);
  const v1::LearnedRateRange& per_unit = m.learned_rate_ranges(0);
  EXPECT_EQ(per_unit.layer(), 0);
  EXPECT_EQ(per_unit.count(), 4);  // one rate per input unit
  EXPECT_NEAR(per_unit.min(), 0.2, 1e-6);
  EXPECT_NEAR(per_unit.mean(), 0.2, 1e-6);
  EXPECT_NEAR(per_unit.max(), 0.2, 1e-6);
  EXPECT_NEAR(m.learned_rates().at(0), per_unit.mean(), 1e-12);
  EXPECT_EQ(m.learned_rate_ranges(1).layer(), 1);
  EXPECT_LE(m.learned_rate_ranges(1).min(), m.learned_rate_ranges(1).max());
  // Fresh weights have log sigma^2 = -10: none is pruned yet.
  ASSERT_EQ(m.pruned_fraction().size(), 1u);
  EXPECT_EQ(m.pruned_fraction().at(1), 0.0);
  EXPECT_EQ(m.class_names_size(), 0);
}

TEST_F(ServiceTest, TrainingOnNamedClassesNamesThemInModelAndPredictions) {
  StartServer();
  std::string csv;
  const Data d = NamedClassCsv("a,b,c,d,animal", 48, &csv);
  v1::UploadDatasetResponse up;
  ASSERT_OK(UploadCsv("animals", csv, 4096, v1::DatasetHeader(), &up));
  ASSERT_OK(CreateModel("m", ClassifierSpec()));
  EXPECT_EQ(GetModel("m").class_names_size(), 0);
  ASSERT_OK(Train(TrainRequest("m", "animals", 1, 16)));
  const std::vector<std::string> sorted = {"cat", "dog", "emu"};
  const v1::ModelInfo m = GetModel("m");
  EXPECT_EQ(std::vector<std::string>(m.class_names().begin(), m.class_names().end()), sorted);

  const v1::Tensor x = RowsOf(d, 2);
  v1::PredictResponse pr;
  ASSERT_OK(Predict("m", x, &pr));
  EXPECT_EQ(std::vector<std::string>(pr.class_names().begin(), pr.class_names().end()), sorted);
  v1::PredictUncertaintyResponse ur;
  ASSERT_OK(Uncertainty(UncertaintyRequest("m", x, 4, 1), &ur));
  EXPECT_EQ(std::vector<std::string>(ur.class_names().begin(), ur.class_names().end()), sorted);
}

TEST_F(ServiceTest, ListModelsIsSortedByName) {
  StartServer();
  for (const char* name : {"charlie", "alpha", "bravo", "Zulu"}) {
    ASSERT_OK(CreateModel(name, ClassifierSpec()));
  }
  const auto models = ListModels();
  std::vector<std::string> names;
  for (const auto& m : models) names.push_back(m.name());
  EXPECT_EQ(names, (std::vector<std::string>{"Zulu", "alpha", "bravo", "charlie"}));
  for (const auto& m : models) {
    EXPECT_EQ(m.version(), 1);
    EXPECT_EQ(m.spec().layers_size(), 4) << m.name();
  }
}

TEST_F(ServiceTest, DeleteModelRemovesItEverywhere) {
  StartServer();
  ASSERT_OK(CreateModel("gone", ClassifierSpec()));
  ASSERT_OK(CreateModel("kept", ClassifierSpec()));
  ASSERT_OK(DeleteModel("gone"));
  EXPECT_FALSE(fs::exists(dir_.path() / "store" / "models" / "gone"));
  ASSERT_EQ(ListModels().size(), 1u);
  EXPECT_EQ(ListModels()[0].name(), "kept");
  EXPECT_CODE(LookUpModel("gone"), StatusCode::NOT_FOUND);
  // The name is free again.
  ASSERT_OK(CreateModel("gone", ClassifierSpec()));
}

// ---- Data sets ----

TEST_F(ServiceTest, UploadDatasetRowsInSeveralChunks) {
  StartServer();
  const Data d = ClassificationData(103, 4, 3);
  v1::UploadDatasetResponse resp;
  ASSERT_OK(UploadRows("rows", d, v1::TASK_CLASSIFICATION, 25, false, &resp));  // 5 chunks
  const v1::DatasetInfo& info = resp.dataset();
  EXPECT_EQ(info.name(), "rows");
  EXPECT_EQ(info.rows(), 103);
  EXPECT_EQ(std::vector<int>(info.input_shape().begin(), info.input_shape().end()),
            std::vector<int>{4});
  EXPECT_EQ(info.targets(), 1);
  EXPECT_EQ(info.num_classes(), 3);
  EXPECT_EQ(info.source(), "upload");
  EXPECT_EQ(info.task(), v1::TASK_CLASSIFICATION);
  // Every value arrived, in order.
  const auto entry = server_->registry().GetDataset("rows");
  ASSERT_EQ(entry.data->x.rows(), 103);
  ASSERT_EQ(entry.data->x.cols(), 4);
  for (int64_t r = 0; r < 103; ++r) {
    for (int c = 0; c < 4; ++c) ASSERT_EQ(entry.data->x(r, c), d.x[r * 4 + c]) << r << "," << c;
    ASSERT_EQ(entry.data->y(r, 0), d.y[r]) << r;
  }
  EXPECT_TRUE(fs::exists(dir_.path() / "store" / "datasets" / "rows" / "dataset.pb"));
}

TEST_F(ServiceTest, UploadDatasetRowsWithAnImageShapeAndRegressionTargets) {
  StartServer();
  Data d = RegressionData(20, 4, 4);
  d.targets = 1;
  v1::UploadDatasetResponse resp;
  ASSERT_OK(UploadRows("img", d, v1::TASK_REGRESSION, 7, false, &resp, {1, 2, 2}));
  EXPECT_EQ(
      std::vector<int>(resp.dataset().input_shape().begin(), resp.dataset().input_shape().end()),
      (std::vector<int>{1, 2, 2}));
  EXPECT_EQ(resp.dataset().task(), v1::TASK_REGRESSION);
  EXPECT_EQ(resp.dataset().num_classes(), 0);
}

TEST_F(ServiceTest, UploadDatasetCsvInChunksThatEndMidLine) {
  StartServer();
  std::string csv;
  const Data d = NamedClassCsv("alpha,beta,gamma,delta,animal", 40, &csv);
  // 13 bytes a chunk: chunks end inside numbers, names and line ends.
  v1::UploadDatasetResponse resp;
  ASSERT_OK(UploadCsv("csv", csv, 13, v1::DatasetHeader(), &resp));
  ASSERT_GT(csv.size() / 13, 20u);
  const v1::DatasetInfo& info = resp.dataset();
  EXPECT_EQ(info.rows(), 40);
  EXPECT_EQ(std::vector<std::string>(info.feature_names().begin(), info.feature_names().end()),
            (std::vector<std::string>{"alpha", "beta", "gamma", "delta"}));
  EXPECT_EQ(std::vector<std::string>(info.class_names().begin(), info.class_names().end()),
            (std::vector<std::string>{"cat", "dog", "emu"}));
  EXPECT_EQ(info.num_classes(), 3);
  const auto entry = server_->registry().GetDataset("csv");
  const int remap[3] = {2, 0, 1};  // emu -> 2, cat -> 0, dog -> 1
  for (int64_t r = 0; r < d.rows; ++r) {
    for (int c = 0; c < 4; ++c) {
      ASSERT_NEAR(entry.data->x(r, c), d.x[r * 4 + c], 1e-6) << r << "," << c;
    }
    ASSERT_EQ(entry.data->y(r, 0), remap[static_cast<int>(d.y[r])]) << r;
  }
}

TEST_F(ServiceTest, UploadDatasetCsvWithANamedRegressionTarget) {
  StartServer();
  const std::string csv =
      "a,y,b\n"
      "1,10.5,2\n"
      "3,-1.25,4\n"
      "5,0,6\n";
  v1::DatasetHeader header;
  header.set_task(v1::TASK_REGRESSION);
  header.set_target_column("y");
  v1::UploadDatasetResponse resp;
  ASSERT_OK(UploadCsv("reg-csv", csv, 5, header, &resp));
  EXPECT_EQ(resp.dataset().rows(), 3);
  EXPECT_EQ(resp.dataset().targets(), 1);
  const auto entry = server_->registry().GetDataset("reg-csv");
  EXPECT_EQ(entry.data->x(1, 0), 3.0f);
  EXPECT_EQ(entry.data->x(1, 1), 4.0f);
  EXPECT_EQ(entry.data->y(1, 0), -1.25f);
}

TEST_F(ServiceTest, UploadDatasetNameTakenUnlessOverwrite) {
  StartServer();
  ASSERT_OK(UploadRows("d", ClassificationData(10, 4, 1)));
  EXPECT_CODE(UploadRows("d", ClassificationData(12, 4, 1)), StatusCode::ALREADY_EXISTS);
  v1::UploadDatasetResponse resp;
  ASSERT_OK(
      UploadRows("d", ClassificationData(12, 4, 1), v1::TASK_CLASSIFICATION, 50, true, &resp));
  EXPECT_EQ(resp.dataset().rows(), 12);
  EXPECT_EQ(ListDatasets().size(), 1u);
}

TEST_F(ServiceTest, UploadDatasetErrors) {
  StartServer();
  auto upload = [&](std::vector<v1::UploadDatasetRequest> msgs) {
    Ctx ctx;
    v1::UploadDatasetResponse resp;
    auto writer = stub_->UploadDataset(&ctx, &resp);
    for (const auto& m : msgs)
      if (!writer->Write(m)) break;
    writer->WritesDone();
    return writer->Finish();
  };
  v1::UploadDatasetRequest header;
  header.mutable_header()->set_name("bad");
  header.mutable_header()->add_input_shape(2);
  v1::UploadDatasetRequest rows;
  for (float v : {1.f, 2.f, 3.f, 4.f}) rows.mutable_rows()->add_features(v);
  for (float v : {0.f, 1.f}) rows.mutable_rows()->add_targets(v);
  v1::UploadDatasetRequest csv;
  csv.set_csv_chunk("a,b\n1,2\n");

  EXPECT_CODE(upload({rows}), StatusCode::INVALID_ARGUMENT);               // no header
  EXPECT_CODE(upload({header}), StatusCode::INVALID_ARGUMENT);             // no rows
  EXPECT_CODE(upload({header, rows, csv}), StatusCode::INVALID_ARGUMENT);  // both kinds
  EXPECT_CODE(upload({header, rows, header}), StatusCode::INVALID_ARGUMENT);
  v1::UploadDatasetRequest ragged = rows;
  ragged.mutable_rows()->add_features(5);  // 5 values are not whole rows of 2
  EXPECT_CODE(upload({header, ragged}), StatusCode::INVALID_ARGUMENT);
  v1::UploadDatasetRequest short_targets = rows;
  short_targets.mutable_rows()->mutable_targets()->RemoveLast();
  EXPECT_CODE(upload({header, short_targets}), StatusCode::INVALID_ARGUMENT);
  v1::UploadDatasetRequest bad_label = rows;
  bad_label.mutable_rows()->set_targets(1, 1.5f);
  EXPECT_CODE(upload({header, bad_label}), StatusCode::INVALID_ARGUMENT);
  bad_label.mutable_rows()->set_targets(1, -1.0f);
  EXPECT_CODE(upload({header, bad_label}), StatusCode::INVALID_ARGUMENT);
  v1::UploadDatasetRequest nan_row = rows;
  nan_row.mutable_rows()->set_features(3, std::numeric_limits<float>::quiet_NaN());
  EXPECT_CODE(upload({header, nan_row}), StatusCode::INVALID_ARGUMENT);
  v1::UploadDatasetRequest bad_csv_value = header;
  v1::UploadDatasetRequest text;
  text.set_csv_chunk("a,b\nx,1\n");  // a feature that is not a number
  EXPECT_CODE(upload({bad_csv_value, text}), StatusCode::INVALID_ARGUMENT);
  EXPECT_TRUE(ListDatasets().empty());
  // And the well-formed upload of the same pieces works.
  ASSERT_OK(upload({header, rows}));
}

TEST_F(ServiceTest, ImportDatasetCsvUnderTheDataRoot) {
  StartServer();
  std::string csv = "x1,x2,x3,x4,label\n";
  const Data d = ClassificationData(30, 4, 6);
  for (int64_t r = 0; r < d.rows; ++r) {
    for (int c = 0; c < 4; ++c) csv += std::to_string(d.x[r * 4 + c]) + ",";
    csv += std::to_string(static_cast<int>(d.y[r])) + "\n";
  }
  WriteFile(dir_.path() / "data" / "sub" / "small.csv", csv);

  v1::ImportDatasetRequest req;
  req.set_name("imported");
  req.set_path("sub/small.csv");
  v1::ImportDatasetResponse resp;
  ASSERT_OK(ImportDataset(req, &resp));
  EXPECT_EQ(resp.dataset().rows(), 30);
  EXPECT_EQ(resp.dataset().source(), "sub/small.csv");
  EXPECT_EQ(resp.dataset().num_classes(), 3);
  EXPECT_EQ(resp.dataset().feature_names_size(), 4);

  req.set_name("imported-5");
  req.set_limit(5);
  ASSERT_OK(ImportDataset(req, &resp));
  EXPECT_EQ(resp.dataset().rows(), 5);
  const auto entry = server_->registry().GetDataset("imported-5");
  EXPECT_NEAR(entry.data->x(4, 3), d.x[4 * 4 + 3], 1e-6);

  // A taken name needs overwrite.
  EXPECT_CODE(ImportDataset(req), StatusCode::ALREADY_EXISTS);
  req.set_overwrite(true);
  ASSERT_OK(ImportDataset(req));
  req.set_limit(-1);
  EXPECT_CODE(ImportDataset(req), StatusCode::INVALID_ARGUMENT);
}

TEST_F(ServiceTest, ImportDatasetIdxGzipped) {
  StartServer();
  constexpr uint32_t kImages = 6, kH = 2, kW = 3;
  std::string images, labels;
  PutBigEndian(&images, 0x00000803);
  PutBigEndian(&images, kImages);
  PutBigEndian(&images, kH);
  PutBigEndian(&images, kW);
  for (uint32_t i = 0; i < kImages * kH * kW; ++i) images.push_back(static_cast<char>(i * 7 % 256));
  PutBigEndian(&labels, 0x00000801);
  PutBigEndian(&labels, kImages);
  for (uint32_t i = 0; i < kImages; ++i) labels.push_back(static_cast<char>(i % 4));
  WriteGzip(dir_.path() / "data" / "idx" / "images-idx3-ubyte.gz", images);
  WriteFile(dir_.path() / "data" / "idx" / "labels-idx1-ubyte", labels);  // plain

  v1::ImportDatasetRequest req;
  req.set_name("idx");
  req.set_path("idx/images-idx3-ubyte.gz");
  req.set_label_path("idx/labels-idx1-ubyte");
  v1::ImportDatasetResponse resp;
  ASSERT_OK(ImportDataset(req, &resp));
  EXPECT_EQ(resp.dataset().rows(), 6);
  EXPECT_EQ(
      std::vector<int>(resp.dataset().input_shape().begin(), resp.dataset().input_shape().end()),
      (std::vector<int>{1, 2, 3}));
  EXPECT_EQ(resp.dataset().num_classes(), 4);
  const auto entry = server_->registry().GetDataset("idx");
  // Stored as the file holds them, raw pixels, with the scale a model applies to them.
  EXPECT_EQ(entry.data->x(2, 5), static_cast<float>((2 * 6 + 5) * 7 % 256));
  EXPECT_EQ(entry.data->input_scale, 1.0f / 255.0f);
  EXPECT_EQ(entry.data->y(5, 0), 1.0f);

  // An image model trains on it and predicts [N, 1, 2, 3] batches.
  v1::ModelSpec spec;
  for (int v : {1, 2, 3}) spec.add_input_shape(v);
  AddLayer(&spec, "flatten");
  AddLayer(&spec, "dense", 8);
  AddLayer(&spec, "relu");
  AddLayer(&spec, "dropout", 0, 0.3);
  AddLayer(&spec, "dense", 4);
  ASSERT_OK(CreateModel("img", spec));
  std::vector<v1::TrainEvent> events;
  ASSERT_OK(Train(TrainRequest("img", "idx", 2, 4), &events));
  EXPECT_EQ(events.back().kind(), v1::TrainEvent::KIND_FINISHED);
  v1::PredictResponse pred;
  ASSERT_OK(Predict("img", Batch(std::vector<float>(12, 0.5f), {2, 1, 2, 3}), &pred));
  EXPECT_EQ(pred.outputs().shape(0), 2);
  EXPECT_EQ(pred.outputs().shape(1), 4);

  // Without the label file an IDX import is refused; a corrupt IDX file is a bad argument.
  req.set_name("idx2");
  req.clear_label_path();
  EXPECT_CODE(ImportDataset(req), StatusCode::INVALID_ARGUMENT);
  WriteFile(dir_.path() / "data" / "idx" / "junk-idx3-ubyte", "not an idx file at all");
  req.set_path("idx/junk-idx3-ubyte");
  req.set_label_path("idx/labels-idx1-ubyte");
  EXPECT_CODE(ImportDataset(req), StatusCode::INVALID_ARGUMENT);
}

TEST_F(ServiceTest, ListAndDeleteDatasets) {
  StartServer();
  for (const char* name : {"zeta", "alpha", "mid"}) {
    ASSERT_OK(UploadRows(name, ClassificationData(10, 4, 1)));
  }
  std::vector<std::string> names;
  for (const auto& d : ListDatasets()) names.push_back(d.name());
  EXPECT_EQ(names, (std::vector<std::string>{"alpha", "mid", "zeta"}));

  ASSERT_OK(DeleteDataset("mid"));
  names.clear();
  for (const auto& d : ListDatasets()) names.push_back(d.name());
  EXPECT_EQ(names, (std::vector<std::string>{"alpha", "zeta"}));
  EXPECT_FALSE(fs::exists(dir_.path() / "store" / "datasets" / "mid"));
  EXPECT_CODE(DeleteDataset("mid"), StatusCode::NOT_FOUND);
  EXPECT_CODE(Train(TrainRequest("x", "mid", 1)), StatusCode::NOT_FOUND);
}

}  // namespace
}  // namespace dropnet::service
