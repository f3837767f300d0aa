// End-to-end: the real dropnet-server on a free port with a temporary store, driven through the
// real `dropnet` binary, checking what it prints (tables, CSV and JSON) and its exit codes.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iomanip>
#include <map>
#include <nlohmann/json.hpp>
#include <regex>
#include <sstream>
#include <string>
#include <vector>

#include "client/client.h"
#include "tests/e2e/e2e_util.h"
#include "tests/testing/temp_dir.h"

namespace dropnet::testing {
namespace {

class CliTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    temp_ = std::make_unique<TempDir>("dropnet-e2e-");
    dir_ = temp_->path();
    fs::create_directories(dir_ / "root");
    fs::copy_file(kSource / "data/digits.csv", dir_ / "root/digits.csv");
    server_ = StartServerProcess(dir_, dir_ / "store",
                                 {"--data-root", (dir_ / "root").string(), "--max-samples", "500"});
    address_ = ListenAddress(*server_);
    ASSERT_FALSE(address_.empty()) << server_->err();
  }
  static void TearDownTestSuite() {
    server_.reset();
    temp_.reset();
  }

  static Result Run(std::vector<std::string> args) { return RunCli(dir_, address_, args); }

  // A model trained on digits, created once for the tests that need one.
  static void EnsureDigitsModel() {
    if (digits_ready_) return;
    ASSERT_EQ(Run({"models", "create", "digits", "--spec",
                   (kSource / "examples/digits_mlp.json").string()})
                  .code,
              0);
    auto up = Run({"data", "upload", "digits", (kSource / "data/digits.csv").string()});
    ASSERT_EQ(up.code, 0) << up.err;
    auto tr = Run(
        {"train", "digits", "--data", "digits", "--epochs", "3", "--standardize", "--seed", "1"});
    ASSERT_EQ(tr.code, 0) << tr.err;
    digits_ready_ = true;
  }

  static fs::path WriteInputs(int rows) {
    fs::path p = dir_ / ("inputs" + std::to_string(rows) + ".csv");
    WriteDigitsRows(p, rows);
    return p;
  }

  static inline std::unique_ptr<TempDir> temp_;
  static inline fs::path dir_;
  static inline std::unique_ptr<Process> server_;
  static inline std::string address_;
  static inline bool digits_ready_ = false;
};

TEST_F(CliTest, HealthSaysServing) {
  auto r = Run({"health"});
  EXPECT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(r.out, "SERVING\n");
}

TEST_F(CliTest, ModelsCreateListGetDelete) {
  auto c = Run({"models", "create", "tmp-model", "--spec",
                (kSource / "examples/breast_cancer_bn.json").string()});
  ASSERT_EQ(c.code, 0) << c.err;
  EXPECT_NE(c.out.find("created model 'tmp-model'"), std::string::npos) << c.out;

  auto l = Run({"models", "list", "--format", "json"});
  ASSERT_EQ(l.code, 0) << l.err;
  auto list = json::parse(l.out);
  bool found = false;
  for (const auto& m : list) found |= m["name"] == "tmp-model" && m["version"] == 1;
  EXPECT_TRUE(found) << l.out;

  auto g = Run({"models", "get", "tmp-model", "--format", "json"});
  ASSERT_EQ(g.code, 0) << g.err;
  auto info = json::parse(g.out);
  EXPECT_EQ(info["name"], "tmp-model");
  EXPECT_EQ(info["parameter_count"], "2242");  // int64 in protobuf's JSON is a string
  EXPECT_EQ(info["spec"]["layers"].size(), 5u);

  auto t = Run({"models", "get", "tmp-model"});
  EXPECT_NE(t.out.find("batch_norm"), std::string::npos) << t.out;

  EXPECT_EQ(Run({"models", "delete", "tmp-model"}).code, 0);
  auto gone = Run({"models", "get", "tmp-model"});
  EXPECT_EQ(gone.code, 10 + 5);  // NOT_FOUND
  EXPECT_NE(gone.err.find("NOT_FOUND: no model named 'tmp-model'"), std::string::npos) << gone.err;
}

TEST_F(CliTest, EveryExampleSpecCreatesAModel) {
  int count = 0;
  for (const auto& e : fs::directory_iterator(kSource / "examples")) {
    if (e.path().extension() != ".json") continue;
    const std::string name = "example-" + e.path().stem().string();
    auto r = Run({"models", "create", name, "--spec", e.path().string()});
    EXPECT_EQ(r.code, 0) << e.path() << ": " << r.err;
    auto g = json::parse(Run({"models", "get", name, "--format", "json"}).out);
    EXPECT_FALSE(g["spec"]["description"].get<std::string>().empty())
        << e.path() << " names no data";
    EXPECT_EQ(Run({"models", "delete", name}).code, 0);
    ++count;
  }
  EXPECT_GE(count, 4);
}

TEST_F(CliTest, BadSpecIsRejectedWithTheField) {
  fs::path spec = dir_ / "bad.json";
  std::ofstream(spec) << R"({"inputShape": [4], "layers": [{"type": "dense", "units": 3},
                          {"type": "dropout", "rate": 1.5}]})";
  auto r = Run({"models", "create", "bad", "--spec", spec.string()});
  EXPECT_EQ(r.code, 10 + 3);  // INVALID_ARGUMENT
  EXPECT_NE(r.err.find("spec.layers[1].rate must be in [0, 1), got 1.5"), std::string::npos)
      << r.err;
}

TEST_F(CliTest, DataUploadImportListDelete) {
  auto up = Run(
      {"data", "upload", "up1", (kSource / "data/diabetes.csv").string(), "--task", "regression"});
  ASSERT_EQ(up.code, 0) << up.err;
  EXPECT_NE(up.out.find("442 rows of 10, regression"), std::string::npos) << up.out;

  auto im = Run({"data", "import", "im1", "digits.csv", "--limit", "100"});
  ASSERT_EQ(im.code, 0) << im.err;
  EXPECT_NE(im.out.find("100 rows of 64, classification, 10 classes"), std::string::npos) << im.out;

  auto escape = Run({"data", "import", "im2", "../store/x.csv"});
  EXPECT_NE(escape.code, 0);
  EXPECT_NE(escape.err.find("leaves the data root"), std::string::npos) << escape.err;

  auto l = Run({"data", "list", "--format", "csv"});
  ASSERT_EQ(l.code, 0);
  EXPECT_NE(l.out.find("up1,regression,442,10,-,upload"), std::string::npos) << l.out;
  EXPECT_NE(l.out.find("im1,classification,100,64,10,digits.csv"), std::string::npos) << l.out;

  EXPECT_EQ(Run({"data", "delete", "up1"}).code, 0);
  EXPECT_EQ(Run({"data", "delete", "up1"}).code, 10 + 5);
}

TEST_F(CliTest, TrainPrintsPlainLinesWhenPiped) {
  EnsureDigitsModel();
  auto r = Run({"train", "digits", "--data", "digits", "--epochs", "2", "--validation-split", "0.2",
                "--seed", "3"});
  ASSERT_EQ(r.code, 0) << r.err;
  EXPECT_NE(r.out.find("training 'digits' on 'digits': 2 epochs"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("epoch 1/2  loss"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("val_acc"), std::string::npos) << r.out;
  EXPECT_EQ(r.out.find('\r'), std::string::npos) << "no progress-bar control characters in a pipe";
  std::smatch m;
  ASSERT_TRUE(std::regex_search(r.out, m, std::regex("published version (\\d+)")));
  auto g = json::parse(Run({"models", "get", "digits", "--format", "json"}).out);
  EXPECT_EQ(g["version"], m[1].str());
}

TEST_F(CliTest, PredictCsvJsonAndFile) {
  EnsureDigitsModel();
  fs::path in = WriteInputs(5);
  auto csv = Run({"predict", "digits", "--input", in.string(), "--format", "csv"});
  ASSERT_EQ(csv.code, 0) << csv.err;
  std::istringstream lines(csv.out);
  std::string line;
  std::getline(lines, line);
  EXPECT_EQ(line.rfind("row,version,class,probability,p0,p1", 0), 0u) << line;
  int rows = 0;
  while (std::getline(lines, line)) {
    std::vector<double> cells;
    std::stringstream ss(line);
    std::string cell;
    while (std::getline(ss, cell, ',')) cells.push_back(std::stod(cell));
    ASSERT_EQ(cells.size(), 14u);
    EXPECT_GE(cells[1], 4);  // the version that answered: 1 + 3 epochs or more
    double sum = 0;
    for (int k = 4; k < 14; ++k) sum += cells[k];
    EXPECT_NEAR(sum, 1.0, 2e-3);
    EXPECT_DOUBLE_EQ(cells[3], cells[4 + static_cast<int>(cells[2])]);
    ++rows;
  }
  EXPECT_EQ(rows, 5);
  EXPECT_NE(csv.err.find("ignoring the last column ('label')"), std::string::npos) << csv.err;

  auto js =
      Run({"predict", "digits", "--input", in.string(), "--format", "json", "--target", "label"});
  ASSERT_EQ(js.code, 0) << js.err;
  auto arr = json::parse(js.out);
  ASSERT_EQ(arr.size(), 5u);
  EXPECT_EQ(arr[0]["probabilities"].size(), 10u);

  fs::path out = dir_ / "pred.csv";
  auto f = Run(
      {"predict", "digits", "--input", in.string(), "--output", out.string(), "--format", "csv"});
  ASSERT_EQ(f.code, 0);
  EXPECT_EQ(ReadWhole(out), csv.out);
}

TEST_F(CliTest, UncertaintyIsReproducibleWithASeed) {
  EnsureDigitsModel();
  fs::path in = WriteInputs(4);
  auto a = Run({"uncertainty", "digits", "--input", in.string(), "--samples", "30", "--seed", "5",
                "--format", "json"});
  auto b = Run({"uncertainty", "digits", "--input", in.string(), "--samples", "30", "--seed", "5",
                "--format", "json"});
  auto c = Run({"uncertainty", "digits", "--input", in.string(), "--samples", "30", "--seed", "6",
                "--format", "json"});
  ASSERT_EQ(a.code, 0) << a.err;
  EXPECT_EQ(a.out, b.out);
  EXPECT_NE(a.out, c.out);
  EXPECT_NE(a.err.find("T = 30, seed 5"), std::string::npos) << a.err;
  auto arr = json::parse(a.out);
  ASSERT_EQ(arr.size(), 4u);
  for (const auto& r : arr) {
    EXPECT_GE(r["entropy"].get<double>(), r["mutual_information"].get<double>() - 1e-6);
    EXPECT_GE(r["variation_ratio"].get<double>(), 0.0);
    EXPECT_LE(r["variation_ratio"].get<double>(), 1.0);
  }
  auto table = Run({"uncertainty", "digits", "--input", in.string(), "-T", "10", "--seed", "1"});
  EXPECT_EQ(table.out.rfind("row  version  prediction  probability  std", 0), 0u) << table.out;

  auto too_many = Run({"uncertainty", "digits", "--input", in.string(), "--samples", "501"});
  EXPECT_EQ(too_many.code, 10 + 8);  // RESOURCE_EXHAUSTED
}

// CSV lines as cells, the header first.
std::vector<std::vector<std::string>> CsvCells(const std::string& text) {
  std::vector<std::vector<std::string>> out;
  std::istringstream lines(text);
  std::string line;
  while (std::getline(lines, line)) {
    std::vector<std::string> cells;
    std::stringstream ss(line);
    std::string cell;
    while (std::getline(ss, cell, ',')) cells.push_back(cell);
    out.push_back(cells);
  }
  return out;
}

// The float a CSV cell or a JSON number reads back as.
float F(const std::string& cell) { return std::strtof(cell.c_str(), nullptr); }
float F(const json& number) { return std::strtof(number.dump().c_str(), nullptr); }

// CSV and JSON print the server's float32 numbers exactly: both read back as the same floats,
// and the table still rounds them for people.
TEST_F(CliTest, CsvAndJsonCarryExactFloats) {
  EnsureDigitsModel();
  fs::path in = WriteInputs(6);
  auto csv = Run({"predict", "digits", "--input", in.string(), "-o", "csv"});
  auto js = Run({"predict", "digits", "--input", in.string(), "-o", "json"});
  ASSERT_EQ(csv.code, 0) << csv.err;
  ASSERT_EQ(js.code, 0) << js.err;
  auto cells = CsvCells(csv.out);
  auto rows = json::parse(js.out);
  ASSERT_EQ(cells.size(), 7u);
  ASSERT_EQ(rows.size(), 6u);
  int long_cells = 0;
  for (size_t i = 0; i < rows.size(); ++i) {
    ASSERT_EQ(cells[i + 1].size(), 14u);
    EXPECT_EQ(cells[i + 1][1], std::to_string(rows[i]["version"].get<int64_t>()));
    EXPECT_EQ(F(cells[i + 1][3]), F(rows[i]["probability"])) << cells[i + 1][3];
    for (int k = 0; k < 10; ++k) {
      const std::string& cell = cells[i + 1][4 + k];
      EXPECT_EQ(F(cell), F(rows[i]["probabilities"][k])) << "row " << i << " p" << k << " " << cell;
      long_cells += cell.size() > 6;
    }
  }
  EXPECT_GT(long_cells, 0) << "every probability fits in 4 decimals? " << csv.out;

  auto ucsv = Run(
      {"uncertainty", "digits", "--input", in.string(), "-T", "20", "--seed", "4", "-o", "csv"});
  auto ujs = Run(
      {"uncertainty", "digits", "--input", in.string(), "-T", "20", "--seed", "4", "-o", "json"});
  ASSERT_EQ(ucsv.code, 0) << ucsv.err;
  auto ucells = CsvCells(ucsv.out);
  auto urows = json::parse(ujs.out);
  ASSERT_EQ(ucells.size(), 7u);
  EXPECT_EQ(ucsv.out.rfind("row,version,prediction,probability,std,entropy,mutual_info,", 0), 0u);
  ASSERT_EQ(urows.size(), 6u);
  for (size_t i = 0; i < urows.size(); ++i) {
    const auto& c = ucells[i + 1];
    ASSERT_EQ(c.size(), 8u) << ucsv.out;
    EXPECT_EQ(c[1], std::to_string(urows[i]["version"].get<int64_t>()));
    EXPECT_EQ(F(c[3]), F(urows[i]["probability"])) << c[3];
    EXPECT_EQ(F(c[4]), F(urows[i]["std"])) << c[4];
    EXPECT_EQ(F(c[5]), F(urows[i]["entropy"])) << c[5];
    EXPECT_EQ(F(c[6]), F(urows[i]["mutual_information"])) << c[6];
    EXPECT_EQ(F(c[7]), F(urows[i]["variation_ratio"])) << c[7];
  }
  auto table = Run({"predict", "digits", "--input", in.string()});
  EXPECT_NE(table.out.find(" 0.0"), std::string::npos) << table.out;
  EXPECT_EQ(table.out.find("e-"), std::string::npos) << "the table rounds: " << table.out;
}

// A regression model with a Gaussian NLL head: predict shows the predicted variances, uncertainty
// the total variance and the interval, in the table, CSV and JSON.
TEST_F(CliTest, RegressionVariancesInEveryFormat) {
  ASSERT_EQ(Run({"models", "create", "diab", "--spec",
                 (kSource / "examples/diabetes_regression.json").string()})
                .code,
            0);
  auto up = Run(
      {"data", "upload", "diab", (kSource / "data/diabetes.csv").string(), "--task", "regression"});
  ASSERT_EQ(up.code, 0) << up.err;
  auto tr =
      Run({"train", "diab", "--data", "diab", "--epochs", "2", "--standardize", "--seed", "1"});
  ASSERT_EQ(tr.code, 0) << tr.err;
  fs::path in = dir_ / "diab3.csv";
  {
    std::ifstream src(kSource / "data/diabetes.csv");
    std::ofstream dst(in);
    std::string line;
    for (int i = 0; i < 4 && std::getline(src, line); ++i) dst << line << "\n";
  }
  auto csv = Run({"predict", "diab", "--input", in.string(), "-o", "csv"});
  ASSERT_EQ(csv.code, 0) << csv.err;
  auto js = Run({"predict", "diab", "--input", in.string(), "-o", "json"});
  auto cells = CsvCells(csv.out);
  auto rows = json::parse(js.out);
  ASSERT_EQ(cells.size(), 4u) << csv.out;
  EXPECT_EQ(cells[0], (std::vector<std::string>{"row", "version", "y0", "var0"})) << csv.out;
  for (size_t i = 0; i < 3; ++i) {
    ASSERT_EQ(cells[i + 1].size(), 4u) << csv.out;
    EXPECT_EQ(cells[i + 1][1], "3");
    EXPECT_GT(F(cells[i + 1][3]), 0.0f) << csv.out;
    EXPECT_EQ(F(cells[i + 1][2]), F(rows[i]["values"][0]));
    EXPECT_EQ(F(cells[i + 1][3]), F(rows[i]["variances"][0]));
  }
  auto table = Run({"predict", "diab", "--input", in.string()});
  EXPECT_EQ(table.out.rfind("row  version  y0", 0), 0u) << table.out;
  EXPECT_NE(table.out.find("var0"), std::string::npos) << table.out;

  auto ucsv =
      Run({"uncertainty", "diab", "--input", in.string(), "-T", "30", "--seed", "1", "-o", "csv"});
  ASSERT_EQ(ucsv.code, 0) << ucsv.err;
  auto ujs =
      Run({"uncertainty", "diab", "--input", in.string(), "-T", "30", "--seed", "1", "-o", "json"});
  auto uc = CsvCells(ucsv.out);
  auto uj = json::parse(ujs.out);
  ASSERT_EQ(uc.size(), 4u) << ucsv.out;
  EXPECT_EQ(uc[0], (std::vector<std::string>{"row", "version", "target", "mean", "std",
                                             "total_variance", "lower", "upper"}));
  for (size_t i = 0; i < 3; ++i) {
    ASSERT_EQ(uc[i + 1].size(), 8u) << ucsv.out;
    const float mean = F(uc[i + 1][3]), sd = F(uc[i + 1][4]), tv = F(uc[i + 1][5]);
    // The head's own variance comes on top of the spread of the samples.
    EXPECT_GT(tv, sd * sd) << ucsv.out;
    EXPECT_LT(F(uc[i + 1][6]), mean);
    EXPECT_GT(F(uc[i + 1][7]), mean);
    EXPECT_EQ(tv, F(uj[i]["total_variance"]));
    EXPECT_EQ(F(uc[i + 1][6]), F(uj[i]["lower"]));
    EXPECT_EQ(F(uc[i + 1][7]), F(uj[i]["upper"]));
  }
  auto ut = Run({"uncertainty", "diab", "--input", in.string(), "-T", "30", "--seed", "1"});
  EXPECT_EQ(ut.out.rfind("row  version  target  mean", 0), 0u) << ut.out;
  EXPECT_NE(ut.out.find("total_variance  lower"), std::string::npos) << ut.out;
}

// --return-samples: the T samples as JSON [T][rows][outputs], as CSV (sample, row, outputs), and a
// table of how the samples voted; their mean is the summary's mean.
TEST_F(CliTest, UncertaintyReturnsTheSamples) {
  EnsureDigitsModel();
  fs::path in = WriteInputs(3);
  const std::vector<std::string> base = {"uncertainty", "digits", "--input", in.string(),
                                         "-T",          "7",      "--seed",  "9"};
  auto with = [&](std::vector<std::string> extra) {
    std::vector<std::string> args = base;
    args.insert(args.end(), extra.begin(), extra.end());
    return Run(args);
  };
  auto summary = with({"-o", "json"});
  auto js = with({"--return-samples", "-o", "json"});
  ASSERT_EQ(js.code, 0) << js.err;
  auto samples = json::parse(js.out);
  ASSERT_EQ(samples.size(), 7u);
  auto mean = json::parse(summary.out);
  for (int i = 0; i < 3; ++i) {
    for (int k = 0; k < 10; ++k) {
      double sum = 0;
      for (int t = 0; t < 7; ++t) {
        ASSERT_EQ(samples[t].size(), 3u);
        ASSERT_EQ(samples[t][i].size(), 10u);
        sum += samples[t][i][k].get<double>();
      }
      EXPECT_NEAR(sum / 7, mean[i]["probabilities"][k].get<double>(), 1e-5) << i << " " << k;
    }
  }
  auto csv = with({"--return-samples", "-o", "csv"});
  ASSERT_EQ(csv.code, 0) << csv.err;
  auto cells = CsvCells(csv.out);
  ASSERT_EQ(cells.size(), 1u + 7 * 3);
  EXPECT_EQ(csv.out.rfind("sample,row,out0,out1,", 0), 0u) << csv.out;
  EXPECT_EQ(cells[0].size(), 12u);
  for (size_t n = 1; n < cells.size(); ++n) {
    ASSERT_EQ(cells[n].size(), 12u) << csv.out;
    const int t = std::stoi(cells[n][0]), i = std::stoi(cells[n][1]);
    EXPECT_EQ(t, static_cast<int>((n - 1) / 3));
    EXPECT_EQ(i, static_cast<int>((n - 1) % 3));
    for (int k = 0; k < 10; ++k) EXPECT_EQ(F(cells[n][2 + k]), F(samples[t][i][k]));
  }
  auto table = with({"--return-samples"});
  ASSERT_EQ(table.code, 0) << table.err;
  EXPECT_NE(table.err.find("-o csv or -o json"), std::string::npos) << table.err;
  std::istringstream lines(table.out);
  std::string line;
  std::getline(lines, line);
  EXPECT_EQ(line.rfind("row  version  votes", 0), 0u) << table.out;
  int rows = 0;
  while (std::getline(lines, line)) {
    int votes = 0;
    std::smatch m;
    for (std::string rest = line; std::regex_search(rest, m, std::regex("(\\d+):(\\d+)"));
         rest = m.suffix()) {
      votes += std::stoi(m[2]);
    }
    EXPECT_EQ(votes, 7) << line;
    ++rows;
  }
  EXPECT_EQ(rows, 3);
}

// train -o json prints one JSON object per event and line; -o csv a header and a row per event.
TEST_F(CliTest, TrainEventsAsJsonLinesAndCsv) {
  EnsureDigitsModel();
  auto js =
      Run({"train", "digits", "--data", "digits", "--epochs", "2", "--seed", "4", "-o", "json"});
  ASSERT_EQ(js.code, 0) << js.err;
  std::istringstream lines(js.out);
  std::string line;
  std::vector<json> events;
  while (std::getline(lines, line)) events.push_back(json::parse(line));
  ASSERT_EQ(events.size(), 4u) << js.out;
  EXPECT_EQ(events[0]["kind"], "started");
  EXPECT_EQ(events[0]["epochs"], 2);
  EXPECT_EQ(events[1]["kind"], "epoch");
  EXPECT_EQ(events[2]["kind"], "epoch");
  EXPECT_EQ(events[3]["kind"], "finished");
  EXPECT_EQ(events[2]["version"].get<int64_t>(), events[1]["version"].get<int64_t>() + 1);
  EXPECT_GT(events[1]["acc"].get<double>(), 0.0);
  EXPECT_TRUE(events[1]["val_loss"].is_null()) << "no validation split";
  auto g = json::parse(Run({"models", "get", "digits", "--format", "json"}).out);
  EXPECT_EQ(g["version"], std::to_string(events[3]["version"].get<int64_t>()));

  auto csv = Run({"train", "digits", "--data", "digits", "--epochs", "1", "--seed", "4",
                  "--validation-split", "0.2", "-o", "csv"});
  ASSERT_EQ(csv.code, 0) << csv.err;
  auto cells = CsvCells(csv.out);
  ASSERT_EQ(cells.size(), 4u) << csv.out;
  EXPECT_EQ(cells[0],
            (std::vector<std::string>{"kind", "epoch", "epochs", "step", "total_steps", "loss",
                                      "acc", "val_loss", "val_acc", "samples_per_second",
                                      "learning_rate", "eta_seconds", "version", "early_stopped"}));
  EXPECT_EQ(cells[1][0], "started");
  EXPECT_EQ(cells[2][0], "epoch");
  EXPECT_EQ(cells[3][0], "finished");
  for (const auto& c : cells) ASSERT_EQ(c.size(), 14u) << csv.out;
  EXPECT_GT(F(cells[2][8]), 0.0f) << csv.out;  // val_acc
  EXPECT_EQ(cells[3][12], std::to_string(events[3]["version"].get<int64_t>() + 1));
}

// --report-every asks for step events in every format, off a terminal too; without it a pipe
// gets epoch events only.
TEST_F(CliTest, TrainReportEveryGivesStepEventsThroughAPipe) {
  EnsureDigitsModel();
  // 1797 rows in batches of 128: 15 steps an epoch, the last one an epoch event.
  auto js = Run({"train", "digits", "--data", "digits", "--epochs", "2", "--seed", "4", "-o",
                 "json", "--report-every", "5"});
  ASSERT_EQ(js.code, 0) << js.err;
  std::istringstream lines(js.out);
  std::vector<int64_t> steps;
  int epochs = 0;
  for (std::string line; std::getline(lines, line);) {
    const json e = json::parse(line);
    if (e["kind"] == "step") {
      steps.push_back(e["step"].get<int64_t>());
      EXPECT_EQ(e["total_steps"], 30) << line;
      EXPECT_GT(e["loss"].get<double>(), 0.0) << line;
    }
    epochs += e["kind"] == "epoch";
  }
  EXPECT_EQ(steps, (std::vector<int64_t>{5, 10, 20, 25})) << js.out;  // 15, 30: epoch events
  EXPECT_EQ(epochs, 2);

  auto csv = Run({"train", "digits", "--data", "digits", "--epochs", "1", "--seed", "4", "-o",
                  "csv", "--report-every", "7"});
  ASSERT_EQ(csv.code, 0) << csv.err;
  int step_rows = 0;
  for (const auto& row : CsvCells(csv.out)) step_rows += row[0] == "step";
  EXPECT_EQ(step_rows, 2) << csv.out;  // steps 7 and 14

  for (const std::vector<std::string> extra :
       {std::vector<std::string>{}, std::vector<std::string>{"--report-every", "0"}}) {
    std::vector<std::string> args = {"train",    "digits", "--data", "digits",
                                     "--epochs", "1",      "-o",     "json"};
    args.insert(args.end(), extra.begin(), extra.end());
    auto none = Run(args);
    ASSERT_EQ(none.code, 0) << none.err;
    EXPECT_EQ(none.out.find(R"("kind":"step")"), std::string::npos) << none.out;
    EXPECT_NE(none.out.find(R"("kind":"epoch")"), std::string::npos) << none.out;
  }
  EXPECT_EQ(Run({"train", "digits", "--data", "digits", "--report-every", "-1"}).code, 2);
}

// demo on a model that has no trained version says so instead of reading noise; with --wait it
// waits for the first epoch, then shows two different items.
TEST_F(CliTest, DemoWaitsForATrainedVersion) {
  const fs::path fashion = "/usr/share/datasets/fashion-mnist";
  if (!fs::exists(fashion / "t10k-images-idx3-ubyte.gz")) GTEST_SKIP() << "no " << fashion;
  for (const char* f : {"t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"}) {
    fs::copy_file(fashion / f, dir_ / "root" / f, fs::copy_options::overwrite_existing);
  }
  ASSERT_EQ(Run({"models", "create", "fashion-mlp", "--spec",
                 (kSource / "examples/fashion_mlp.json").string()})
                .code,
            0);
  auto now = Run({"demo", "--data-dir", fashion.string(), "--wait", "0"});
  EXPECT_EQ(now.code, 1) << now.out << now.err;
  EXPECT_NE(now.out.find("has no trained version yet"), std::string::npos) << now.out;
  EXPECT_EQ(now.out.find("a confident item"), std::string::npos) << now.out;

  Process demo({kCli, "demo", "--data-dir", fashion.string(), "--wait", "120"}, dir_,
               {{"DROPNET_SERVER", address_}});
  ASSERT_FALSE(demo.WaitFor("waiting|Waiting", false).empty()) << demo.out() << demo.err();
  auto im = Run({"data", "import", "fashion-small", "t10k-images-idx3-ubyte.gz",
                 "t10k-labels-idx1-ubyte.gz", "--limit", "1000"});
  ASSERT_EQ(im.code, 0) << im.err;
  auto tr = Run({"train", "fashion-mlp", "--data", "fashion-small", "--epochs", "1"});
  ASSERT_EQ(tr.code, 0) << tr.err;
  ASSERT_EQ(demo.Wait(std::chrono::seconds(120)), 0) << demo.out() << demo.err();
  const std::string out = demo.out();
  std::smatch m;
  ASSERT_TRUE(std::regex_search(
      out, m, std::regex(R"(a confident item \(#(\d+)\) +an ambiguous item \(#(\d+)\))")))
      << out;
  EXPECT_NE(m[1].str(), m[2].str()) << out;
  EXPECT_NE(out.find("Version 2 is trained"), std::string::npos) << out;
  EXPECT_EQ(Run({"models", "delete", "fashion-mlp"}).code, 0);
}

// Labels from the command line, and --model-version on predict, uncertainty and evaluate: the
// pinned version answers, and JSON and CSV name it.
TEST_F(CliTest, LabelsAndModelVersion) {
  ASSERT_EQ(Run({"models", "create", "pinned", "--spec",
                 (kSource / "examples/digits_mlp.json").string(), "--serving-label", "stable"})
                .code,
            0);
  auto up = Run({"data", "upload", "pinned-data", (kSource / "data/digits.csv").string()});
  ASSERT_EQ(up.code, 0) << up.err;
  auto tr = Run({"train", "pinned", "--data", "pinned-data", "--epochs", "2", "--seed", "1"});
  ASSERT_EQ(tr.code, 0) << tr.err;
  fs::path in = WriteInputs(3);
  // The serving label (version 1) answers by default, whatever training published.
  auto def = Run({"predict", "pinned", "--input", in.string(), "--format", "json"});
  ASSERT_EQ(def.code, 0) << def.err;
  EXPECT_EQ(json::parse(def.out)[0]["version"], 1);
  auto label = Run({"models", "label", "pinned", "canary", "3"});
  ASSERT_EQ(label.code, 0) << label.err;
  EXPECT_NE(label.out.find("canary"), std::string::npos) << label.out;
  auto pinned = Run({"predict", "pinned", "--input", in.string(), "--format", "csv",
                     "--model-version", "canary"});
  ASSERT_EQ(pinned.code, 0) << pinned.err;
  EXPECT_NE(pinned.out.find("\n0,3,"), std::string::npos) << pinned.out;
  auto unc = Run({"uncertainty", "pinned", "--input", in.string(), "-T", "5", "--seed", "1",
                  "--model-version", "2", "--format", "json"});
  ASSERT_EQ(unc.code, 0) << unc.err;
  EXPECT_EQ(json::parse(unc.out)[0]["version"], 2);
  auto ev = Run(
      {"evaluate", "pinned", "--data", "pinned-data", "--model-version", "3", "--format", "json"});
  ASSERT_EQ(ev.code, 0) << ev.err;
  EXPECT_EQ(json::parse(ev.out)["version"], "3");
  // Promotion, then the label's removal; the serving label stays.
  ASSERT_EQ(Run({"models", "label", "pinned", "stable", "3"}).code, 0);
  def = Run({"predict", "pinned", "--input", in.string(), "--format", "json"});
  EXPECT_EQ(json::parse(def.out)[0]["version"], 3);
  EXPECT_EQ(Run({"models", "unlabel", "pinned", "canary"}).code, 0);
  EXPECT_EQ(Run({"models", "unlabel", "pinned", "stable"}).code, 10 + 9);  // FAILED_PRECONDITION
  auto missing = Run({"predict", "pinned", "--input", in.string(), "--model-version", "canary"});
  EXPECT_EQ(missing.code, 10 + 5);  // NOT_FOUND
  auto get = Run({"models", "get", "pinned"});
  ASSERT_EQ(get.code, 0) << get.err;
  EXPECT_NE(get.out.find("versions"), std::string::npos) << get.out;
  EXPECT_NE(get.out.find("stable (served)"), std::string::npos) << get.out;
  auto set = Run({"models", "set", "pinned", "--serving-label", ""});
  ASSERT_EQ(set.code, 0) << set.err;
  EXPECT_NE(set.out.find("serves version 3"), std::string::npos) << set.out;
}

TEST_F(CliTest, EvaluateEvalAndMonteCarlo) {
  EnsureDigitsModel();
  auto e = Run({"evaluate", "digits", "--data", "digits", "--format", "json"});
  ASSERT_EQ(e.code, 0) << e.err;
  auto j = json::parse(e.out);
  EXPECT_GT(j["accuracy"].get<double>(), 0.5);
  EXPECT_EQ(j["rows"], "1797");
  auto mc = Run({"evaluate", "digits", "--data", "digits", "--mc-samples", "10", "--seed", "2",
                 "--format", "json"});
  ASSERT_EQ(mc.code, 0) << mc.err;
  auto k = json::parse(mc.out);
  EXPECT_EQ(k["mode"], "EVAL_MODE_MONTE_CARLO");
  EXPECT_EQ(k["samples"], 10);
  EXPECT_GT(k["nll"].get<double>(), 0.0);
  auto t = Run({"evaluate", "digits", "--data", "digits"});
  EXPECT_NE(t.out.find("accuracy  nll"), std::string::npos) << t.out;
}

// evaluate reads EvaluateStream: progress on stderr, and on stdout the metrics of the unary
// Evaluate call (asked here through the client library) for the same request and seed.
TEST_F(CliTest, EvaluatePrintsProgressAndTheSameMetrics) {
  EnsureDigitsModel();
  auto mc = Run({"evaluate", "digits", "--data", "digits", "--mc-samples", "20", "--seed", "5",
                 "-o", "json"});
  ASSERT_EQ(mc.code, 0) << mc.err;
  EXPECT_TRUE(std::regex_search(mc.err, std::regex(R"(evaluated 1797/1797 rows in \d+\.\d s\n)")))
      << mc.err;
  auto j = json::parse(mc.out);  // stdout holds the answer alone
  client::ClientOptions o;
  o.target = address_;
  client::Client c(o);
  v1::EvaluateRequest req;
  req.set_model("digits");
  req.set_dataset("digits");
  req.set_mode(v1::EVAL_MODE_MONTE_CARLO);
  req.set_samples(20);
  req.set_seed(5);
  req.set_version(std::to_string(std::stoll(j["version"].get<std::string>())));
  const v1::EvaluateResponse unary = c.Evaluate(req);
  EXPECT_EQ(j["rows"], "1797");
  EXPECT_EQ(j["samples"], 20);
  EXPECT_EQ(j["seed"], "5");
  EXPECT_EQ(j["accuracy"].get<double>(), unary.accuracy());
  EXPECT_EQ(j["nll"].get<double>(), unary.nll());
  EXPECT_EQ(j["brier"].get<double>(), unary.brier());
  EXPECT_EQ(j["ece"].get<double>(), unary.ece());
  ASSERT_EQ(j["reliability"].size(), static_cast<size_t>(unary.reliability_size()));

  // The table: the same numbers, rounded; the progress stays on stderr.
  auto t = Run({"evaluate", "digits", "--data", "digits", "--mc-samples", "20", "--seed", "5"});
  ASSERT_EQ(t.code, 0) << t.err;
  EXPECT_NE(t.out.find("monte_carlo T=20"), std::string::npos) << t.out;
  std::ostringstream nll;
  nll << std::fixed << std::setprecision(4) << unary.nll();
  EXPECT_NE(t.out.find(nll.str()), std::string::npos) << t.out << " lacks " << nll.str();
  EXPECT_EQ(t.out.find("evaluated"), std::string::npos) << t.out;
  EXPECT_NE(t.err.find("evaluated 1797/1797 rows"), std::string::npos) << t.err;

  // A limit: the progress counts the rows scored.
  auto l = Run({"evaluate", "digits", "--data", "digits", "--limit", "300", "-o", "csv"});
  ASSERT_EQ(l.code, 0) << l.err;
  EXPECT_NE(l.err.find("evaluated 300/300 rows"), std::string::npos) << l.err;
}

TEST_F(CliTest, BenchReportsLatencyAndThroughputPerWorkloadAndLevel) {
  EnsureDigitsModel();
  // About a second: 4 workloads x 2 levels x (0.1 s + 0.02 s warm-up).
  auto r = Run({"bench", "digits", "--concurrency", "1,2", "--duration", "0.1", "--warmup", "0.02",
                "--batch", "16", "--samples", "10", "--json"});
  ASSERT_EQ(r.code, 0) << r.err;
  auto j = json::parse(r.out);
  EXPECT_EQ(j["model"], "digits");
  EXPECT_EQ(j["input_width"], 64);
  EXPECT_EQ(j["channels"], "a channel per worker");
  ASSERT_EQ(j["results"].size(), 8u);
  std::map<std::string, int> seen;
  for (const auto& x : j["results"]) {
    const std::string what =
        x["name"].get<std::string>() + " c" + std::to_string(x["concurrency"].get<int>());
    ++seen[x["workload"].get<std::string>()];
    EXPECT_GT(x["calls"].get<int64_t>(), 0) << what;
    EXPECT_EQ(x["errors"].get<int64_t>(), 0) << what;
    const double p50 = x["p50_ms"], p90 = x["p90_ms"], p99 = x["p99_ms"];
    EXPECT_GT(p50, 0.0) << what;
    EXPECT_GE(p90, p50) << what;
    EXPECT_GE(p99, p90) << what;
    EXPECT_GE(x["max_ms"].get<double>(), p99) << what;
    EXPECT_GT(x["calls_per_second"].get<double>(), 0.0) << what;
    EXPECT_GE(x["client_cpu"].get<double>(), 0.0) << what;
    EXPECT_NEAR(x["rows_per_second"].get<double>(),
                x["calls_per_second"].get<double>() * x["rows"].get<int>(), 1e-6)
        << what;
  }
  EXPECT_EQ(seen, (std::map<std::string, int>{
                      {"health", 2}, {"predict", 2}, {"predict-batch", 2}, {"uncertainty", 2}}));
  EXPECT_EQ(j["results"][2]["rows"], 16);
  EXPECT_EQ(j["results"][3]["samples"], 10);
  ASSERT_EQ(j["ratios"].size(), 2u);
  for (const auto& x : j["ratios"]) {
    EXPECT_GT(x["predict_p50_over_health_p50"].get<double>(), 0.0);
    EXPECT_GT(x["uncertainty_p50_over_health_p50"].get<double>(), 0.0);
  }
  EXPECT_NE(r.err.find("bench [8/8] concurrency 2, uncertainty T=10: p50"), std::string::npos)
      << r.err;

  // A fixed number of calls, and the table.
  auto t = Run({"bench", "digits", "-c", "1", "--count", "20", "--warmup", "0", "--workloads",
                "health,predict", "--quiet"});
  ASSERT_EQ(t.code, 0) << t.err;
  EXPECT_NE(t.out.find("workload    concurrency  calls  errors  p50_ms"), std::string::npos)
      << t.out;
  EXPECT_NE(t.out.find("predict b1  1            20     0"), std::string::npos) << t.out;
  EXPECT_NE(t.out.find("p50 over the health-check p50"), std::string::npos) << t.out;
  EXPECT_TRUE(t.err.empty()) << t.err;

  // -o csv: the result table, a row per workload and level.
  auto csv = Run({"bench", "digits", "-c", "1", "--count", "5", "--warmup", "0", "--workloads",
                  "health,predict", "--quiet", "-o", "csv"});
  ASSERT_EQ(csv.code, 0) << csv.err;
  auto cells = CsvCells(csv.out);
  ASSERT_EQ(cells.size(), 3u) << csv.out;
  EXPECT_EQ(csv.out.rfind("workload,name,rows,samples,concurrency,calls,errors,seconds,p50_ms,", 0),
            0u)
      << csv.out;
  EXPECT_EQ(cells[1][0], "health");
  EXPECT_EQ(cells[2][0], "predict");
  for (size_t n = 1; n < 3; ++n) {
    ASSERT_GE(cells[n].size(), 16u) << csv.out;
    EXPECT_EQ(cells[n][5], "5") << csv.out;  // calls
    EXPECT_EQ(cells[n][6], "0") << csv.out;  // errors
    EXPECT_GT(std::stod(cells[n][8]), 0.0) << csv.out;
  }

  EXPECT_EQ(Run({"bench", "digits", "--workloads", "nothing"}).code, 2);
  EXPECT_EQ(Run({"bench", "no-such-model", "--count", "1", "--warmup", "0"}).code, 10 + 5);
}

// `dropnet rank`: the top rows by each criterion, in every format, progress on stderr, the
// scores `dropnet uncertainty` prints for the same rows, seed and T, and its errors.
TEST_F(CliTest, RankPrintsTheRowsToLabelNext) {
  EnsureDigitsModel();
  // One batch of every row, so that `uncertainty` of the whole file is the same computation.
  const std::vector<std::string> common = {"rank", "digits", "--data", "digits",       "--samples",
                                           "20",   "--seed", "3",      "--batch-size", "2000"};
  auto with = [&](std::vector<std::string> more) {
    std::vector<std::string> args = common;
    args.insert(args.end(), more.begin(), more.end());
    return Run(args);
  };
  auto j = with({"--top", "5", "-o", "json"});
  ASSERT_EQ(j.code, 0) << j.err;
  EXPECT_NE(j.err.find("ranked 1797/1797 rows"), std::string::npos) << j.err;
  EXPECT_NE(j.err.find("1797 rows of 'digits' ranked by mutual_information (highest first)"),
            std::string::npos)
      << j.err;
  EXPECT_NE(j.err.find("T = 20, seed 3"), std::string::npos) << j.err;
  auto top = json::parse(j.out);
  ASSERT_EQ(top.size(), 5u);
  auto all = Run({"uncertainty", "digits", "--input", WriteInputs(1797).string(), "--samples", "20",
                  "--seed", "3", "-o", "json"});
  ASSERT_EQ(all.code, 0) << all.err;
  auto rows = json::parse(all.out);
  ASSERT_EQ(rows.size(), 1797u);
  double highest = 0;
  for (const auto& r : rows) highest = std::max(highest, r["mutual_information"].get<double>());
  for (size_t i = 0; i < top.size(); ++i) {
    EXPECT_EQ(top[i]["rank"], i + 1);
    EXPECT_EQ(top[i]["criterion"], "mutual_information");
    const auto row = top[i]["row"].get<size_t>();
    EXPECT_EQ(top[i]["score"], rows[row]["mutual_information"]) << "row " << row;
    EXPECT_EQ(top[i]["prediction"], rows[row]["prediction"]);
    if (i > 0) EXPECT_LE(top[i]["score"].get<double>(), top[i - 1]["score"].get<double>());
  }
  EXPECT_EQ(top[0]["score"].get<double>(), highest);

  auto table = with({"--top", "3"});
  ASSERT_EQ(table.code, 0) << table.err;
  EXPECT_EQ(table.out.rfind("rank  row", 0), 0u) << table.out;
  EXPECT_NE(table.out.find("mutual_information  prediction"), std::string::npos) << table.out;
  auto csv = with({"--top", "4", "--by", "margin", "-o", "csv"});
  ASSERT_EQ(csv.code, 0) << csv.err;
  std::istringstream lines(csv.out);
  std::string line;
  std::getline(lines, line);
  EXPECT_EQ(line, "rank,row,margin,prediction");
  double previous = -1;
  int count = 0;
  while (std::getline(lines, line)) {
    std::vector<std::string> cells;
    std::stringstream cell(line);
    for (std::string c; std::getline(cell, c, ',');) cells.push_back(c);
    ASSERT_EQ(cells.size(), 4u) << line;
    EXPECT_GE(std::stod(cells[2]), previous) << "smallest margin first";
    previous = std::stod(cells[2]);
    ++count;
  }
  EXPECT_EQ(count, 4);
  EXPECT_NE(csv.err.find("ranked by margin (smallest first)"), std::string::npos) << csv.err;

  EXPECT_EQ(with({"--top", "0"}).code, 2);
  EXPECT_EQ(with({"--top", "3", "--by", "confusion"}).code, 2);
  auto missing = Run({"rank", "digits", "--data", "no-such-data", "--top", "3"});
  EXPECT_EQ(missing.code, 10 + 5) << missing.err;  // NOT_FOUND
  EXPECT_NE(missing.err.find("no data set named 'no-such-data'"), std::string::npos) << missing.err;
}

TEST_F(CliTest, CtrlCCancelsTrainingAndKeepsAVersion) {
  EnsureDigitsModel();
  Process p({kCli, "train", "digits", "--data", "digits", "--epochs", "100000"}, dir_,
            {{"DROPNET_SERVER", address_}});
  auto m = p.WaitFor(R"(epoch 2/100000 .*-> version (\d+))", false);
  ASSERT_FALSE(m.empty()) << p.out() << p.err();
  p.Signal(SIGINT);
  EXPECT_EQ(p.Wait(std::chrono::seconds(30)), 130) << p.out() << p.err();
  std::smatch kept;
  const std::string out = p.out();
  ASSERT_TRUE(
      std::regex_search(out, kept, std::regex("cancelled: model 'digits' keeps version (\\d+)")))
      << out;
  auto g = json::parse(Run({"models", "get", "digits", "--format", "json"}).out);
  EXPECT_EQ(g["version"], kept[1].str());
  EXPECT_FALSE(g.value("training", false));
}

// Ctrl-C during a long Monte-Carlo evaluate: the call is cancelled between two batches, exit
// status 130, and the server is free for the next call.
TEST_F(CliTest, CtrlCCancelsEvaluate) {
  // Dropout on the inputs, so that every pass runs the whole 64-256-256-10 network: with the
  // digits four times over (7188 rows) and T = 500, tens of seconds of work.
  const fs::path spec = dir_ / "wide.json";
  std::ofstream(spec) << R"({"inputShape": [64], "task": "TASK_CLASSIFICATION", "layers": [
      {"type": "dropout", "rate": 0.2}, {"type": "dense", "units": 256}, {"type": "relu"},
      {"type": "dense", "units": 256}, {"type": "relu"}, {"type": "dense", "units": 10}]})";
  auto created = Run({"models", "create", "wide", "--spec", spec.string()});
  ASSERT_EQ(created.code, 0) << created.err;
  const fs::path big = dir_ / "digits4.csv";
  {
    std::ifstream in(kSource / "data/digits.csv");
    std::string header, rows, line;
    std::getline(in, header);
    while (std::getline(in, line)) rows += line + "\n";
    std::ofstream out(big);
    out << header << "\n";
    for (int i = 0; i < 4; ++i) out << rows;
  }
  auto up = Run({"data", "upload", "digits4", big.string()});
  ASSERT_EQ(up.code, 0) << up.err;
  const auto start = std::chrono::steady_clock::now();
  Process p({kCli, "evaluate", "wide", "--data", "digits4", "--mc-samples", "500"}, dir_,
            {{"DROPNET_SERVER", address_}});
  auto m = p.WaitFor(R"(evaluated (\d+)/7188 rows)", true);
  ASSERT_FALSE(m.empty()) << p.out() << p.err();
  ASSERT_LT(std::stoll(m[1].str()), 7188) << "the evaluation ended before Ctrl-C";
  p.Signal(SIGINT);
  EXPECT_EQ(p.Wait(std::chrono::seconds(30)), 130) << p.out() << p.err();
  EXPECT_NE(p.err().find("cancelled"), std::string::npos) << p.err();
  EXPECT_TRUE(p.out().empty()) << p.out();
  std::cerr << "evaluate ran "
            << std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count()
            << " s before it was cancelled\n";
  // The server stopped computing: a small evaluation answers at once.
  auto small = Run({"evaluate", "wide", "--data", "digits4", "--limit", "100", "--timeout", "5"});
  EXPECT_EQ(small.code, 0) << small.err;
  EXPECT_EQ(Run({"data", "delete", "digits4"}).code, 0);
  EXPECT_EQ(Run({"models", "delete", "wide"}).code, 0);
}

TEST_F(CliTest, UnreachableServerSaysSo) {
  Process p({kCli, "--server", "127.0.0.1:1", "--timeout", "2", "health"}, dir_);
  EXPECT_EQ(p.Wait(), 10 + 14);  // UNAVAILABLE
  EXPECT_NE(p.err().find("is dropnet-server running"), std::string::npos) << p.err();
}

TEST_F(CliTest, UsageErrorsExitTwo) {
  EXPECT_EQ(Run({"models"}).code, 2);
  EXPECT_EQ(Run({"predict", "digits"}).code, 2);  // --input is required
}

TEST_F(CliTest, GlobalOptionsGoAnywhereOnTheLine) {
  auto r = RunCli(dir_, "127.0.0.1:1", {"health", "--server", address_, "--timeout", "10"});
  EXPECT_EQ(r.code, 0) << r.err;
  EXPECT_EQ(r.out, "SERVING\n");
  auto l = Run({"models", "list", "-o", "json", "--timeout", "10"});
  ASSERT_EQ(l.code, 0) << l.err;
  EXPECT_TRUE(json::parse(l.out).is_array()) << l.out;
  auto d = Run({"data", "list", "--format", "csv"});
  ASSERT_EQ(d.code, 0) << d.err;
  EXPECT_EQ(d.out.rfind("name,task,rows", 0), 0u) << d.out;
}

TEST_F(CliTest, HelpVersionAndCommandList) {
  auto v = Run({"--version"});
  EXPECT_EQ(v.code, 0);
  EXPECT_EQ(v.out, "dropnet " DROPNET_PROJECT_VERSION "\n");
  auto h = Run({"help"});
  EXPECT_EQ(h.code, 0);
  EXPECT_NE(h.out.find("uncertainty"), std::string::npos) << h.out;
  auto hm = Run({"help", "models", "list"});
  EXPECT_EQ(hm.code, 0);
  EXPECT_NE(hm.out.find("Usage: dropnet models list"), std::string::npos) << hm.out;
  auto bare = Run({});
  EXPECT_EQ(bare.code, 1);
  EXPECT_NE(bare.out.find("evaluate"), std::string::npos) << bare.out;
}

TEST_F(CliTest, MisspeltCommandGetsASuggestion) {
  auto r = Run({"modles", "list"});
  EXPECT_EQ(r.code, 2);
  EXPECT_NE(r.err.find("unknown command 'modles', did you mean 'models'?"), std::string::npos)
      << r.err;
  auto s = Run({"models", "lst"});
  EXPECT_EQ(s.code, 2);
  EXPECT_NE(s.err.find("did you mean 'list'?"), std::string::npos) << s.err;
}

TEST_F(CliTest, BashCompletionRegistersItself) {
  Process p({"/bin/bash", "-c", "source <(" + kCli + " completion bash); complete -p dropnet"},
            dir_);
  EXPECT_EQ(p.Wait(), 0) << p.err();
  EXPECT_NE(p.out().find("-F _dropnet dropnet"), std::string::npos) << p.out();
  auto script = Run({"completion", "bash"}).out;
  for (const char* word : {"\" models list\"", "uncertainty", "--mc-samples", "--server"}) {
    EXPECT_NE(script.find(word), std::string::npos) << word;
  }
}

TEST_F(CliTest, DeadlineExceededSuggestsTimeout) {
  EnsureDigitsModel();
  auto r =
      Run({"evaluate", "digits", "--data", "digits", "--mc-samples", "400", "--timeout", "0.001"});
  EXPECT_EQ(r.code, 10 + 4);  // DEADLINE_EXCEEDED
  EXPECT_NE(r.err.find("--timeout"), std::string::npos) << r.err;
}

TEST(ServerProcessTest, SigtermDrainsAndExitsZero) {
  TempDir temp("dropnet-sigterm-");
  const fs::path& dir = temp.path();
  Process server({kServer, "--listen", "127.0.0.1:0", "--store", (dir / "store").string(),
                  "--drain-delay", "1"},
                 dir);
  ASSERT_FALSE(server.WaitFor(R"(\(port (\d+)\))", true).empty()) << server.err();
  const auto start = std::chrono::steady_clock::now();
  server.Signal(SIGTERM);
  EXPECT_EQ(server.Wait(std::chrono::seconds(10)), 0) << server.err();
  // Health stays NOT_SERVING for the drain delay before the server stops.
  EXPECT_GE(std::chrono::steady_clock::now() - start, std::chrono::milliseconds(900));
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(10));
  EXPECT_NE(server.err().find("health NOT_SERVING"), std::string::npos) << server.err();
}

// A second server on a port that is taken exits with the reason instead of sharing the port
// (gRPC's default SO_REUSEPORT would let both listen and split the connections between them).
TEST(ServerProcessTest, SecondServerOnATakenPortFailsAndSaysSo) {
  TempDir temp("dropnet-port-");
  const fs::path& dir = temp.path();
  Process first(
      {kServer, "--listen", "127.0.0.1:0", "--store", (dir / "one").string(), "--drain-delay", "0"},
      dir);
  const std::smatch m = first.WaitFor(R"(\(port (\d+)\))", true);
  ASSERT_FALSE(m.empty()) << first.err();
  const std::string port = m[1].str();
  Process second({kServer, "--listen", "127.0.0.1:" + port, "--store", (dir / "two").string()},
                 dir);
  EXPECT_NE(second.Wait(std::chrono::seconds(10)), 0) << second.err();
  EXPECT_NE(second.err().find("cannot listen on 127.0.0.1:" + port), std::string::npos)
      << second.err();
  first.Signal(SIGTERM);
  EXPECT_EQ(first.Wait(std::chrono::seconds(10)), 0) << first.err();
}

}  // namespace
}  // namespace dropnet::testing
