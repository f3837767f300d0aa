// Table-driven malformed / hostile requests against the real in-process server: each case
// expects a status code (and, for INVALID_ARGUMENT, a substring of the message).
#include <google/protobuf/text_format.h>
#include <gtest/gtest.h>
#include <unistd.h>
#include <zlib.h>

#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <functional>
#include <limits>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include <grpcpp/grpcpp.h>
#include <grpcpp/impl/codegen/client_unary_call.h>

#include "dropnet/v1/service.grpc.pb.h"
#include "server/service/server.h"
#include "tests/testing/spec_json.h"

namespace dropnet::service {
namespace {

namespace fs = std::filesystem;
using grpc::StatusCode;
constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();
constexpr double kInf = std::numeric_limits<double>::infinity();
// The codes the tables expect, by short names.
constexpr StatusCode OK = StatusCode::OK;
constexpr StatusCode IA = StatusCode::INVALID_ARGUMENT;
constexpr StatusCode NF = StatusCode::NOT_FOUND;
constexpr StatusCode PD = StatusCode::PERMISSION_DENIED;
constexpr StatusCode RE = StatusCode::RESOURCE_EXHAUSTED;

struct Case {
  std::string name;
  StatusCode code;
  std::string substr;
  std::function<grpc::Status(v1::Dropnet::Stub*)> call;
};

std::unique_ptr<grpc::ClientContext> Ctx() {
  auto c = std::make_unique<grpc::ClientContext>();
  c->set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(20));
  return c;
}

// One unary call of `method` with `r` and a fresh context; the answer is dropped.
template <typename Req, typename Resp>
grpc::Status Unary(v1::Dropnet::Stub* st,
                   grpc::Status (v1::Dropnet::Stub::*method)(grpc::ClientContext*, const Req&,
                                                             Resp*),
                   const Req& r) {
  Resp resp;
  auto c = Ctx();
  return (st->*method)(c.get(), r, &resp);
}

// The message written in protobuf's text format.
template <typename Message>
Message TextProto(const std::string& text) {
  Message m;
  if (!google::protobuf::TextFormat::ParseFromString(text, &m)) ADD_FAILURE() << text;
  return m;
}

// A case that calls `method` with `base` changed by `mut`.
template <typename Req, typename Resp>
Case CallCase(std::string n, StatusCode code, std::string sub,
              grpc::Status (v1::Dropnet::Stub::*method)(grpc::ClientContext*, const Req&, Resp*),
              Req base, std::function<void(Req*)> mut) {
  return {std::move(n), code, std::move(sub), [=](v1::Dropnet::Stub* st) {
            Req r = base;
            mut(&r);
            return Unary(st, method, r);
          }};
}

// A case that calls `method` with a request filled by `fill`.
template <typename Req, typename Resp, typename Fill>
Case UnaryCase(std::string n, StatusCode code,
               grpc::Status (v1::Dropnet::Stub::*method)(grpc::ClientContext*, const Req&, Resp*),
               Fill fill) {
  return {std::move(n), code, "", [=](v1::Dropnet::Stub* st) {
            Req r;
            fill(&r);
            return Unary(st, method, r);
          }};
}

v1::ModelSpec Spec(int width = 4) {
  v1::ModelSpec s;
  s.add_input_shape(width);
  s.set_seed(1);
  auto* l = s.add_layers();
  l->set_type("dense");
  l->set_units(8);
  l = s.add_layers();
  l->set_type("dropout");
  l->set_rate(0.2);
  l = s.add_layers();
  l->set_type("dense");
  l->set_units(3);
  return s;
}

grpc::Status Create(v1::Dropnet::Stub* st, const std::string& name, const v1::ModelSpec& spec) {
  v1::CreateModelRequest r;
  r.set_name(name);
  *r.mutable_spec() = spec;
  return Unary(st, &v1::Dropnet::Stub::CreateModel, r);
}

Case CreateCase(std::string n, StatusCode code, std::string sub,
                std::function<void(v1::ModelSpec*)> mut, std::string model = "bad") {
  return {n, code, sub, [=](v1::Dropnet::Stub* st) {
            v1::ModelSpec s = Spec();
            mut(&s);
            return Create(st, model, s);
          }};
}

// One row of four features 0.5: a valid input of model "good".
void OneRowOfFour(v1::Tensor* t) {
  t->add_shape(1);
  t->add_shape(4);
  for (int i = 0; i < 4; ++i) t->add_values(0.5f);
}

// A request for model "good" with one valid row.
template <typename Req>
Req ForGood() {
  Req r;
  r.set_model("good");
  OneRowOfFour(r.mutable_inputs());
  return r;
}

Case PredictCase(std::string n, StatusCode code, std::string sub,
                 std::function<void(v1::PredictRequest*)> mut) {
  return CallCase(std::move(n), code, std::move(sub), &v1::Dropnet::Stub::Predict,
                  ForGood<v1::PredictRequest>(), mut);
}

// Eight samples of one valid row of model "good", changed by `mut`.
Case UncCase(std::string n, StatusCode code, std::string sub,
             std::function<void(v1::PredictUncertaintyRequest*)> mut) {
  auto base = ForGood<v1::PredictUncertaintyRequest>();
  base.set_samples(8);
  return CallCase(std::move(n), code, std::move(sub), &v1::Dropnet::Stub::PredictUncertainty, base,
                  mut);
}

grpc::Status Upload(v1::Dropnet::Stub* st, const std::string& name, v1::Task task, int width,
                    const std::vector<float>& features, const std::vector<float>& targets) {
  v1::UploadDatasetResponse resp;
  auto c = Ctx();
  auto w = st->UploadDataset(c.get(), &resp);
  v1::UploadDatasetRequest r;
  auto* h = r.mutable_header();
  h->set_name(name);
  h->set_task(task);
  h->add_input_shape(width);
  w->Write(r);
  r.Clear();
  r.mutable_rows()->mutable_features()->Add(features.begin(), features.end());
  r.mutable_rows()->mutable_targets()->Add(targets.begin(), targets.end());
  w->Write(r);
  w->WritesDone();
  return w->Finish();
}

// rows x width features; targets r % classes (classification) or a smooth function (regression).
grpc::Status UploadTable(v1::Dropnet::Stub* st, const std::string& name, v1::Task task, int width,
                         int rows, int classes) {
  std::vector<float> x, y;
  for (int r = 0; r < rows; ++r) {
    for (int c = 0; c < width; ++c) x.push_back(std::sin(static_cast<float>(3 * r + c)));
    y.push_back(task == v1::TASK_REGRESSION ? std::cos(static_cast<float>(r)) : r % classes);
  }
  return Upload(st, name, task, width, x, y);
}

// An import named "imp" of ok.csv, changed by `mut`.
Case ImportCase(std::string n, StatusCode code, std::string sub,
                std::function<void(v1::ImportDatasetRequest*)> mut) {
  return CallCase(std::move(n), code, std::move(sub), &v1::Dropnet::Stub::ImportDataset,
                  TextProto<v1::ImportDatasetRequest>(R"(name: "imp" path: "ok.csv")"), mut);
}

// An import of the file `path` (with the IDX labels `label_path`, when not empty).
Case ImportFileCase(std::string n, StatusCode code, std::string sub, std::string path,
                    std::string label_path = "") {
  return ImportCase(std::move(n), code, std::move(sub), [=](v1::ImportDatasetRequest* r) {
    r->set_path(path);
    r->set_label_path(label_path);
  });
}

grpc::Status RunTrain(v1::Dropnet::Stub* st, const v1::TrainRequest& r,
                      std::chrono::milliseconds deadline = std::chrono::seconds(20)) {
  grpc::ClientContext c;
  c.set_deadline(std::chrono::system_clock::now() + deadline);
  auto rd = st->Train(&c, r);
  v1::TrainEvent e;
  while (rd->Read(&e)) {
  }
  return rd->Finish();
}

// Model "good" (4 features, 3 classes) on data set "cls4" (12 rows), one epoch of batch 4.
Case TrainCase(std::string n, StatusCode code, std::string sub,
               std::function<void(v1::TrainRequest*)> mut) {
  return {n, code, sub, [=](v1::Dropnet::Stub* st) {
            v1::TrainRequest r;
            r.set_model("good");
            r.set_dataset("cls4");
            r.set_epochs(1);
            r.set_batch_size(4);
            r.set_seed(1);
            mut(&r);
            return RunTrain(st, r);
          }};
}

// Model "good" on data set "cls4", changed by `mut`.
Case EvalCase(std::string n, StatusCode code, std::string sub,
              std::function<void(v1::EvaluateRequest*)> mut) {
  return CallCase(std::move(n), code, std::move(sub), &v1::Dropnet::Stub::Evaluate,
                  TextProto<v1::EvaluateRequest>(R"(model: "good" dataset: "cls4")"), mut);
}

v1::LayerSpec* Add(v1::ModelSpec* s, const std::string& type, int units = 0) {
  auto* l = s->add_layers();
  l->set_type(type);
  if (units) l->set_units(units);
  return l;
}

// [1, 8, 8] -> conv2d(2 filters, 3x3) -> relu -> max_pool2d(2) -> flatten -> dense(3).
v1::ModelSpec ConvSpec() {
  return testing::SpecFromJson(R"({"inputShape": [1, 8, 8], "layers": [
      {"type": "conv2d", "filters": 2, "kernelSize": 3}, {"type": "relu"},
      {"type": "max_pool2d", "poolSize": 2}, {"type": "flatten"}, {"type": "dense", "units": 3}]})");
}

// [5, 3] -> lstm(4) -> dense(3).
v1::ModelSpec RnnSpec() {
  return testing::SpecFromJson(R"({"inputShape": [5, 3], "layers": [
      {"type": "lstm", "units": 4}, {"type": "dense", "units": 3}]})");
}

// [4] -> <layer under test> -> dense(3).
v1::ModelSpec FlatSpec(const std::string& type, int units = 0) {
  v1::ModelSpec s;
  s.add_input_shape(4);
  Add(&s, type, units);
  Add(&s, "dense", 3);
  return s;
}

Case SpecCase(std::string n, StatusCode code, std::string sub, std::function<v1::ModelSpec()> make,
              std::function<void(v1::ModelSpec*)> mut) {
  return {n, code, sub, [=](v1::Dropnet::Stub* st) {
            v1::ModelSpec s = make();
            mut(&s);
            // A spec that is accepted leaves a model behind; remove it so the name stays free.
            grpc::Status status = Create(st, "family", s);
            if (status.ok()) {
              v1::DeleteModelRequest d;
              d.set_name("family");
              Unary(st, &v1::Dropnet::Stub::DeleteModel, d);
            }
            return status;
          }};
}

// The cases of a layer's width field (`field`, set by `set`): each of `non_positive` is
// INVALID_ARGUMENT, INT_MAX passes the width limit and `too_many` the parameter limit.
void AddWidthCases(std::vector<Case>* t, const std::string& what, const std::string& field,
                   std::function<v1::ModelSpec()> make, std::initializer_list<int> non_positive,
                   int too_many, std::function<void(v1::ModelSpec*, int)> set) {
  for (int v : non_positive)
    t->push_back(SpecCase(what + " " + std::to_string(v), IA, field, make,
                          [=](v1::ModelSpec* s) { set(s, v); }));
  t->push_back(SpecCase(what + " past the width limit", RE, field, make,
                        [=](v1::ModelSpec* s) { set(s, std::numeric_limits<int>::max()); }));
  t->push_back(SpecCase(what + " past the parameter limit", RE, "parameters", make,
                        [=](v1::ModelSpec* s) { set(s, too_many); }));
}

class BadInputTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string tmpl = (fs::temp_directory_path() / "dropnet-bad-input-XXXXXX").string();
    dir_ = ::mkdtemp(tmpl.data());
    ServerConfig c;
    c.listen = "127.0.0.1:0";
    c.store = dir_ / "store";
    c.shutdown_grace_seconds = 5;
    c.service.data_root = dir_ / "data";
    c.service.max_samples = 100;
    c.service.default_samples = 8;
    c.service.max_batch_rows = 64;
    c.service.max_dataset_bytes = 4096;
    c.limits.max_parameters = 10000;
    c.limits.max_layers = 16;
    server_ = std::make_unique<Server>(std::move(c));
    server_->Start();
    channel_ = grpc::CreateChannel("127.0.0.1:" + std::to_string(server_->port()),
                                   grpc::InsecureChannelCredentials());
    stub_ = v1::Dropnet::NewStub(channel_);
  }
  void TearDown() override {
    stub_.reset();
    channel_.reset();
    server_->Shutdown();
    server_->Wait();
    server_.reset();
    std::error_code ec;
    fs::remove_all(dir_, ec);
  }
  fs::path dir_;
  std::unique_ptr<Server> server_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::Dropnet::Stub> stub_;
};

std::vector<Case> Table() {
  std::vector<Case> t;
  auto noop = [](v1::ModelSpec*) {};
  // CreateModel names.
  t.push_back(CreateCase("name empty", IA, "name", noop, ""));
  t.push_back(CreateCase("name too long", IA, "name", noop, std::string(1000, 'a')));
  t.push_back(CreateCase("name traversal", IA, "name", noop, "../etc"));
  t.push_back(CreateCase("name slash", IA, "name", noop, "a/b"));
  t.push_back(CreateCase("name NUL", IA, "name", noop, std::string("a\0b", 3)));
  t.push_back(CreateCase("name unicode", IA, "name", noop, "mod\xc3\xa8le"));
  t.push_back(CreateCase("name dot", IA, "name", noop, "."));
  t.push_back(CreateCase("name dotdot", IA, "name", noop, ".."));
  t.push_back(CreateCase("name space", IA, "name", noop, "a b"));
  t.push_back(CreateCase("duplicate", StatusCode::ALREADY_EXISTS, "", noop, "good"));
  // Specs.
  t.push_back(CreateCase("no layers", IA, "", [](v1::ModelSpec* s) { s->clear_layers(); }));
  t.push_back(
      CreateCase("no input shape", IA, "", [](v1::ModelSpec* s) { s->clear_input_shape(); }));
  t.push_back(CreateCase("unknown layer", IA, "",
                         [](v1::ModelSpec* s) { s->mutable_layers(0)->set_type("bogus"); }));
  t.push_back(CreateCase("units zero", IA, "",
                         [](v1::ModelSpec* s) { s->mutable_layers(0)->set_units(0); }));
  t.push_back(CreateCase("units negative", IA, "",
                         [](v1::ModelSpec* s) { s->mutable_layers(0)->set_units(-5); }));
  t.push_back(
      CreateCase("input dim zero", IA, "", [](v1::ModelSpec* s) { s->set_input_shape(0, 0); }));
  t.push_back(CreateCase("input dim negative", IA, "",
                         [](v1::ModelSpec* s) { s->set_input_shape(0, -3); }));
  for (double r : {-0.1, 1.0, kNaN, kInf}) {
    t.push_back(CreateCase("dropout rate " + std::to_string(r), IA, "",
                           [r](v1::ModelSpec* s) { s->mutable_layers(1)->set_rate(r); }));
    t.push_back(
        CreateCase("gaussian_dropout rate " + std::to_string(r), IA, "", [r](v1::ModelSpec* s) {
          s->mutable_layers(1)->set_type("gaussian_dropout");
          s->mutable_layers(1)->set_rate(r);
        }));
    t.push_back(
        CreateCase("alpha_dropout rate " + std::to_string(r), IA, "", [r](v1::ModelSpec* s) {
          s->mutable_layers(1)->set_type("alpha_dropout");
          s->mutable_layers(1)->set_rate(r);
        }));
  }
  t.push_back(
      CreateCase("too many layers", StatusCode::RESOURCE_EXHAUSTED, "", [](v1::ModelSpec* s) {
        for (int i = 0; i < 40; ++i) {
          auto* l = s->add_layers();
          l->set_type("relu");
        }
      }));
  t.push_back(CreateCase("too many parameters", StatusCode::RESOURCE_EXHAUSTED, "",
                         [](v1::ModelSpec* s) { s->mutable_layers(0)->set_units(5000); }));
  t.push_back(CreateCase("tau NaN", IA, "", [](v1::ModelSpec* s) { s->set_tau(kNaN); }));
  t.push_back(CreateCase("tau negative", IA, "", [](v1::ModelSpec* s) { s->set_tau(-1); }));
  t.push_back(CreateCase("unknown task", IA, "",
                         [](v1::ModelSpec* s) { s->set_task(static_cast<v1::Task>(77)); }));
  t.push_back(CreateCase("unknown loss", IA, "spec.loss",
                         [](v1::ModelSpec* s) { s->set_loss(static_cast<v1::Loss>(77)); }));
  // Predict.
  auto pnf = [](v1::PredictRequest* r) { r->set_model("nope"); };
  t.push_back(PredictCase("predict unknown model", NF, "", pnf));
  t.push_back(PredictCase("predict empty tensor", IA, "",
                          [](v1::PredictRequest* r) { r->clear_inputs(); }));
  t.push_back(PredictCase("predict count mismatch", IA, "",
                          [](v1::PredictRequest* r) { r->mutable_inputs()->add_values(1); }));
  t.push_back(PredictCase("predict wrong width", IA, "", [](v1::PredictRequest* r) {
    r->mutable_inputs()->set_shape(1, 2);
    r->mutable_inputs()->mutable_values()->Truncate(2);
  }));
  t.push_back(PredictCase("predict negative dim", IA, "",
                          [](v1::PredictRequest* r) { r->mutable_inputs()->set_shape(0, -1); }));
  for (int pos = 0; pos < 4; ++pos)
    for (float v : {std::nanf(""), INFINITY, -INFINITY})
      t.push_back(PredictCase(
          "predict nonfinite " + std::to_string(v) + " at " + std::to_string(pos), IA, "",
          [pos, v](v1::PredictRequest* r) { r->mutable_inputs()->set_values(pos, v); }));
  t.push_back(PredictCase("predict batch over limit", StatusCode::RESOURCE_EXHAUSTED, "",
                          [](v1::PredictRequest* r) {
                            r->mutable_inputs()->set_shape(0, 65);
                            for (int i = 0; i < 64 * 4; ++i) r->mutable_inputs()->add_values(0);
                          }));
  // PredictUncertainty.
  t.push_back(UncCase("unc unknown model", NF, "",
                      [](v1::PredictUncertaintyRequest* r) { r->set_model("nope"); }));
  t.push_back(UncCase("unc samples negative", IA, "",
                      [](v1::PredictUncertaintyRequest* r) { r->set_samples(-1); }));
  t.push_back(UncCase("unc samples over", StatusCode::RESOURCE_EXHAUSTED, "",
                      [](v1::PredictUncertaintyRequest* r) { r->set_samples(101); }));
  for (double iv : {1.0, kNaN, -0.5})
    t.push_back(UncCase("unc interval " + std::to_string(iv), IA, "",
                        [iv](v1::PredictUncertaintyRequest* r) { r->set_interval(iv); }));
  t.push_back(UncCase("unc NaN input", IA, "", [](v1::PredictUncertaintyRequest* r) {
    r->mutable_inputs()->set_values(2, std::nanf(""));
  }));
  // More spec cases.
  for (double r : {-0.1, 1.0, kNaN}) {
    t.push_back(CreateCase("drop_connect rate " + std::to_string(r), IA, "", [r](v1::ModelSpec* s) {
      s->mutable_layers(1)->set_type("drop_connect");
      s->mutable_layers(1)->set_units(8);
      s->mutable_layers(1)->set_rate(r);
    }));
  }
  t.push_back(CreateCase("input 4-D", IA, "input_shape", [](v1::ModelSpec* s) {
    s->add_input_shape(2);
    s->add_input_shape(2);
    s->add_input_shape(2);
  }));
  t.push_back(CreateCase("tau Inf", IA, "tau", [](v1::ModelSpec* s) { s->set_tau(kInf); }));
  // Dataset and training lookups.
  t.push_back(UnaryCase("delete unknown dataset", NF, &v1::Dropnet::Stub::DeleteDataset,
                        [](v1::DeleteDatasetRequest* r) { r->set_name("nope"); }));
  t.push_back(EvalCase("evaluate unknown model", NF, "", [](v1::EvaluateRequest* r) {
    r->set_model("nope");
    r->set_dataset("nope");
  }));
  t.push_back({"upload no header", IA, "", [](v1::Dropnet::Stub* st) {
                 v1::UploadDatasetResponse resp;
                 auto c = Ctx();
                 auto w = st->UploadDataset(c.get(), &resp);
                 v1::UploadDatasetRequest r;
                 r.mutable_rows()->add_features(1);
                 w->Write(r);
                 w->WritesDone();
                 return w->Finish();
               }});
  t.push_back({"upload empty stream", IA, "", [](v1::Dropnet::Stub* st) {
                 v1::UploadDatasetResponse resp;
                 auto c = Ctx();
                 auto w = st->UploadDataset(c.get(), &resp);
                 w->WritesDone();
                 return w->Finish();
               }});
  for (const char* n :
       {"-lead", "_lead", "a\nb", "a:b", "a\\b", "a*b", "a%2e", "a?b", "/abs", "~home"})
    t.push_back(CreateCase(std::string("name ") + n, IA, "name", noop, n));
  for (int pos : {4, 7, 11})
    for (float v : {std::nanf(""), INFINITY, -INFINITY})
      t.push_back(
          PredictCase("batch3 nonfinite at " + std::to_string(pos) + " " + std::to_string(v), IA,
                      "", [pos, v](v1::PredictRequest* r) {
                        r->mutable_inputs()->set_shape(0, 3);
                        for (int i = 0; i < 8; ++i) r->mutable_inputs()->add_values(0.25f);
                        r->mutable_inputs()->set_values(pos, v);
                      }));
  t.push_back(PredictCase("predict zero rows", IA, "", [](v1::PredictRequest* r) {
    r->mutable_inputs()->set_shape(0, 0);
    r->mutable_inputs()->clear_values();
  }));
  t.push_back(UnaryCase("get unknown model", NF, &v1::Dropnet::Stub::GetModel,
                        [](v1::GetModelRequest* r) { r->set_name("nope"); }));
  t.push_back(EvalCase("evaluate unknown dataset", NF, "",
                       [](v1::EvaluateRequest* r) { r->set_dataset("nope"); }));
  for (const char* m : {"nope", "good"})
    t.push_back({std::string("train unknown ") + m, NF, "", [m](v1::Dropnet::Stub* st) {
                   v1::TrainRequest r;
                   r.set_model(m);
                   r.set_dataset("nope");
                   r.set_epochs(1);
                   auto c = Ctx();
                   auto rd = st->Train(c.get(), r);
                   v1::TrainEvent e;
                   while (rd->Read(&e)) {
                   }
                   return rd->Finish();
                 }});
  for (int pos : {0, 1, 3})
    for (float v : {std::nanf(""), INFINITY, -INFINITY})
      t.push_back(UncCase(
          "unc nonfinite at " + std::to_string(pos) + " " + std::to_string(v), IA, "",
          [pos, v](v1::PredictUncertaintyRequest* r) { r->mutable_inputs()->set_values(pos, v); }));
  // Deletes and lookups.
  t.push_back(UnaryCase("delete unknown model", NF, &v1::Dropnet::Stub::DeleteModel,
                        [](v1::DeleteModelRequest* r) { r->set_name("nope"); }));
  return t;
}

// ImportDataset, Train and Evaluate options. The data root holds the files the test writes
// (ok.csv, bad CSVs, IDX pairs); data sets cls4, cls5, reg4 and cls4x6 are uploaded first.
std::vector<Case> OptionsTable() {
  std::vector<Case> t;
  // ImportDataset: names and paths.
  t.push_back(ImportCase("import control", OK, "",
                         [](v1::ImportDatasetRequest* r) { r->set_name("imp-ok"); }));
  t.push_back(ImportCase("import taken name", StatusCode::ALREADY_EXISTS, "",
                         [](v1::ImportDatasetRequest* r) { r->set_name("imp-ok"); }));
  t.push_back(ImportCase("import empty name", IA, "name",
                         [](v1::ImportDatasetRequest* r) { r->set_name(""); }));
  t.push_back(ImportCase("import name traversal", IA, "name",
                         [](v1::ImportDatasetRequest* r) { r->set_name("../x"); }));
  t.push_back(ImportFileCase("import empty path", IA, "path", ""));
  t.push_back(ImportFileCase("import absolute path", IA, "relative", "/etc/passwd"));
  t.push_back(ImportFileCase("import parent path", PD, "", "../outside.csv"));
  t.push_back(ImportCase("import parent inside path", PD, "", [](v1::ImportDatasetRequest* r) {
    r->set_path("sub/../../outside.csv");
  }));
  t.push_back(ImportFileCase("import symlink out", PD, "", "link.csv"));
  t.push_back(ImportFileCase("import missing file", NF, "", "nope.csv"));
  t.push_back(ImportFileCase("import directory", NF, "", "sub"));
  t.push_back(ImportCase("import NUL in path", IA, "path", [](v1::ImportDatasetRequest* r) {
    r->set_path(std::string("ok.csv\0/../../outside.csv", 25));
  }));
  t.push_back(ImportCase("import negative limit", IA, "limit",
                         [](v1::ImportDatasetRequest* r) { r->set_limit(-1); }));
  t.push_back(ImportCase("import unknown task", IA, "task", [](v1::ImportDatasetRequest* r) {
    r->set_task(static_cast<v1::Task>(77));
  }));
  // ImportDataset: wrong formats.
  t.push_back(ImportFileCase("import text feature", IA, "line 3", "words.csv"));
  t.push_back(ImportFileCase("import empty csv", IA, "empty", "empty.csv"));
  t.push_back(ImportFileCase("import header only", IA, "no data rows", "header.csv"));
  t.push_back(ImportFileCase("import ragged csv", IA, "fields", "ragged.csv"));
  t.push_back(ImportCase("import unknown target", IA, "nope",
                         [](v1::ImportDatasetRequest* r) { r->set_target_column("nope"); }));
  t.push_back(
      ImportCase("import text regression target", IA, "target", [](v1::ImportDatasetRequest* r) {
        r->set_path("strings.csv");
        r->set_task(v1::TASK_REGRESSION);
      }));
  t.push_back(ImportFileCase("import binary as csv", IA, "", "binary.csv"));
  t.push_back(ImportFileCase("import idx without labels", IA, "label_path", "images-idx3-ubyte"));
  t.push_back(
      ImportFileCase("import idx missing labels", NF, "", "images-idx3-ubyte", "nope-idx1-ubyte"));
  t.push_back(
      ImportFileCase("import idx labels outside", PD, "", "images-idx3-ubyte", "../outside.csv"));
  t.push_back(ImportCase("import idx control", OK, "", [](v1::ImportDatasetRequest* r) {
    r->set_name("imp-idx");
    r->set_path("images-idx3-ubyte");
    r->set_label_path("labels-idx1-ubyte");
  }));
  t.push_back(ImportFileCase("import idx count mismatch", IA, "labels", "images-idx3-ubyte",
                             "labels2-idx1-ubyte"));
  t.push_back(
      ImportFileCase("import idx swapped", IA, "IDX", "labels-idx1-ubyte", "images-idx3-ubyte"));
  t.push_back(ImportFileCase("import idx truncated gzip", IA, "IDX", "cut-idx3-ubyte.gz",
                             "labels-idx1-ubyte"));
  t.push_back(
      ImportFileCase("import idx gzip bomb", IA, "IDX", "bomb-idx3-ubyte.gz", "labels-idx1-ubyte"));
  t.push_back(ImportFileCase("import idx text", IA, "IDX", "ok.txt", "labels-idx1-ubyte"));
  t.push_back(
      ImportFileCase("import idx labels are csv", IA, "IDX", "images-idx3-ubyte", "ok.csv"));
  t.push_back(
      ImportFileCase("import idx huge header", IA, "IDX", "huge-idx3-ubyte", "labels-idx1-ubyte"));
  t.push_back({"upload unknown task", IA, "task", [](v1::Dropnet::Stub* st) {
                 return Upload(st, "up-task", static_cast<v1::Task>(77), 1, {1}, {0});
               }});

  // Train.
  constexpr int kIntMax = std::numeric_limits<int>::max();
  t.push_back(TrainCase("train control", OK, "", [](v1::TrainRequest*) {}));
  t.push_back(TrainCase("train epochs negative", IA, "epochs",
                        [](v1::TrainRequest* r) { r->set_epochs(-1); }));
  t.push_back(TrainCase("train epochs zero means 10", OK, "",
                        [](v1::TrainRequest* r) { r->set_epochs(0); }));
  t.push_back({"train epochs huge stops at the deadline", StatusCode::DEADLINE_EXCEEDED, "",
               [](v1::Dropnet::Stub* st) {
                 v1::TrainRequest r;
                 r.set_model("good");
                 r.set_dataset("cls4");
                 r.set_epochs(kIntMax);
                 r.set_batch_size(4);
                 return RunTrain(st, r, std::chrono::milliseconds(1500));
               }});
  t.push_back({"train after a deadline frees the model", OK, "", [](v1::Dropnet::Stub* st) {
                 v1::TrainRequest r;
                 r.set_model("good");
                 r.set_dataset("cls4");
                 r.set_epochs(1);
                 grpc::Status s;
                 for (int i = 0; i < 100; ++i) {
                   s = RunTrain(st, r);
                   if (s.error_code() != StatusCode::FAILED_PRECONDITION) break;
                   std::this_thread::sleep_for(std::chrono::milliseconds(100));
                 }
                 return s;
               }});
  t.push_back(TrainCase("train batch negative", IA, "batch_size",
                        [](v1::TrainRequest* r) { r->set_batch_size(-4); }));
  t.push_back(TrainCase("train batch huge", OK, "",
                        [](v1::TrainRequest* r) { r->set_batch_size(kIntMax); }));
  for (double lr : {kNaN, kInf, -kInf, -0.1})
    t.push_back(TrainCase("train learning_rate " + std::to_string(lr), IA, "learning_rate",
                          [lr](v1::TrainRequest* r) { r->set_learning_rate(lr); }));
  t.push_back(TrainCase("train learning_rate beyond float", IA, "learning rate",
                        [](v1::TrainRequest* r) { r->set_learning_rate(1e300); }));
  t.push_back(TrainCase("train unknown optimizer", IA, "optimizer", [](v1::TrainRequest* r) {
    r->set_optimizer(static_cast<v1::Optimizer>(77));
  }));
  for (double m : {-0.5, 1.0, kNaN})
    t.push_back(
        TrainCase("train momentum " + std::to_string(m), IA, "momentum", [m](v1::TrainRequest* r) {
          r->set_optimizer(v1::OPTIMIZER_SGD);
          r->set_momentum(m);
        }));
  t.push_back(TrainCase("train nesterov without momentum", IA, "nesterov", [](v1::TrainRequest* r) {
    r->set_optimizer(v1::OPTIMIZER_SGD);
    r->set_momentum(0);
    r->set_nesterov(true);
  }));
  for (double wd : {-1.0, kNaN, kInf})
    t.push_back(TrainCase("train weight_decay " + std::to_string(wd), IA, "weight_decay",
                          [wd](v1::TrainRequest* r) { r->set_weight_decay(wd); }));
  for (double mn : {-1.0, kNaN, kInf})
    t.push_back(TrainCase("train max_norm " + std::to_string(mn), IA, "max_norm",
                          [mn](v1::TrainRequest* r) { r->set_max_norm(mn); }));
  for (double vs : {-0.1, 1.0, 2.0, kNaN, kInf})
    t.push_back(TrainCase("train validation_split " + std::to_string(vs), IA, "validation_split",
                          [vs](v1::TrainRequest* r) { r->set_validation_split(vs); }));
  t.push_back(TrainCase("train validation takes every row", IA, "no training rows",
                        [](v1::TrainRequest* r) { r->set_validation_split(0.99); }));
  t.push_back(TrainCase("train patience negative", IA, "early_stopping_patience",
                        [](v1::TrainRequest* r) { r->set_early_stopping_patience(-1); }));
  t.push_back(TrainCase("train patience without split", IA, "validation_split",
                        [](v1::TrainRequest* r) { r->set_early_stopping_patience(2); }));
  t.push_back(TrainCase("train unknown schedule", IA, "schedule", [](v1::TrainRequest* r) {
    r->set_schedule(static_cast<v1::Schedule>(77));
  }));
  t.push_back(
      TrainCase("train schedule_step_epochs negative", IA, "step_epochs", [](v1::TrainRequest* r) {
        r->set_schedule(v1::SCHEDULE_STEP);
        r->set_schedule_step_epochs(-1);
      }));
  for (double g : {2.0, -0.5, kNaN})
    t.push_back(TrainCase("train schedule_gamma " + std::to_string(g), IA, "gamma",
                          [g](v1::TrainRequest* r) {
                            r->set_schedule(v1::SCHEDULE_STEP);
                            r->set_schedule_gamma(g);
                          }));
  t.push_back(TrainCase("train report_every_steps negative", IA, "report_every_steps",
                        [](v1::TrainRequest* r) { r->set_report_every_steps(-1); }));
  t.push_back(TrainCase("train unknown dataset", NF, "",
                        [](v1::TrainRequest* r) { r->set_dataset("nope"); }));
  t.push_back(
      TrainCase("train empty model name", NF, "", [](v1::TrainRequest* r) { r->set_model(""); }));
  // Data sets that do not fit model "good", for Train and Evaluate alike.
  for (const auto& [what, dataset, sub] :
       {std::tuple{"feature count mismatch", "cls5", "features"},
        std::tuple{"regression data", "reg4", "regression"},
        std::tuple{"more classes than outputs", "cls4x6", "classes"}}) {
    const std::string d = dataset;
    t.push_back(TrainCase(std::string("train ") + what, IA, sub,
                          [d](v1::TrainRequest* r) { r->set_dataset(d); }));
    t.push_back(EvalCase(std::string("evaluate ") + what, IA, sub,
                         [d](v1::EvaluateRequest* r) { r->set_dataset(d); }));
  }
  t.push_back(TrainCase("train image data on a flat model", IA, "features",
                        [](v1::TrainRequest* r) { r->set_dataset("imp-idx"); }));

  // Evaluate.
  t.push_back(EvalCase("evaluate control", OK, "", [](v1::EvaluateRequest*) {}));
  t.push_back(EvalCase("evaluate mc control", OK, "", [](v1::EvaluateRequest* r) {
    r->set_mode(v1::EVAL_MODE_MONTE_CARLO);
    r->set_samples(5);
    r->set_seed(1);
  }));
  t.push_back(EvalCase("evaluate mc default samples", OK, "",
                       [](v1::EvaluateRequest* r) { r->set_mode(v1::EVAL_MODE_MONTE_CARLO); }));
  t.push_back(EvalCase("evaluate limit negative", IA, "limit",
                       [](v1::EvaluateRequest* r) { r->set_limit(-1); }));
  t.push_back(EvalCase("evaluate limit huge", OK, "", [](v1::EvaluateRequest* r) {
    r->set_limit(std::numeric_limits<int64_t>::max());
  }));
  t.push_back(EvalCase("evaluate unknown mode", IA, "mode",
                       [](v1::EvaluateRequest* r) { r->set_mode(static_cast<v1::EvalMode>(77)); }));
  t.push_back(EvalCase("evaluate mc samples negative", IA, "samples", [](v1::EvaluateRequest* r) {
    r->set_mode(v1::EVAL_MODE_MONTE_CARLO);
    r->set_samples(-1);
  }));
  t.push_back(EvalCase("evaluate mc samples over limit", RE, "", [](v1::EvaluateRequest* r) {
    r->set_mode(v1::EVAL_MODE_MONTE_CARLO);
    r->set_samples(101);
  }));
  t.push_back(EvalCase("evaluate empty dataset name", NF, "",
                       [](v1::EvaluateRequest* r) { r->set_dataset(""); }));
  return t;
}

// Convolution, pooling, recurrent and learned-rate layer families. Limits: 10000 parameters, 16
// layers, 2^20 features per activation row.
std::vector<Case> FamilyTable() {
  std::vector<Case> t;
  constexpr int kIntMax = std::numeric_limits<int>::max();
  auto conv = [](v1::ModelSpec* s) { return s->mutable_layers(0); };
  auto pool = [](v1::ModelSpec* s) { return s->mutable_layers(2); };
  // conv2d.
  t.push_back(SpecCase("conv control", OK, "", ConvSpec, [](v1::ModelSpec*) {}));
  for (int k : {0, -1})
    t.push_back(SpecCase("conv kernel " + std::to_string(k), IA, "kernel_size", ConvSpec,
                         [=](v1::ModelSpec* s) { conv(s)->set_kernel_size(k); }));
  t.push_back(SpecCase("conv kernel larger than input", IA, "does not fit", ConvSpec,
                       [=](v1::ModelSpec* s) { conv(s)->set_kernel_size(9); }));
  t.push_back(
      SpecCase("conv kernel larger than input, padded", OK, "", ConvSpec, [=](v1::ModelSpec* s) {
        conv(s)->set_kernel_size(9);
        conv(s)->set_padding(1);
        s->mutable_layers(2)->set_type("relu");
        s->mutable_layers(2)->clear_pool_size();
      }));
  t.push_back(SpecCase("conv kernel huge", RE, "kernel_size", ConvSpec,
                       [=](v1::ModelSpec* s) { conv(s)->set_kernel_size(kIntMax); }));
  t.push_back(SpecCase("conv stride negative", IA, "stride", ConvSpec,
                       [=](v1::ModelSpec* s) { conv(s)->set_stride(-2); }));
  t.push_back(SpecCase("conv stride huge", RE, "stride", ConvSpec,
                       [=](v1::ModelSpec* s) { conv(s)->set_stride(kIntMax); }));
  t.push_back(SpecCase("conv stride larger than input", OK, "", ConvSpec, [=](v1::ModelSpec* s) {
    conv(s)->set_stride(100);
    s->mutable_layers(2)->set_type("relu");
    s->mutable_layers(2)->clear_pool_size();
  }));
  t.push_back(SpecCase("conv padding negative", IA, "padding", ConvSpec,
                       [=](v1::ModelSpec* s) { conv(s)->set_padding(-1); }));
  t.push_back(SpecCase("conv padding int max", RE, "padding", ConvSpec,
                       [=](v1::ModelSpec* s) { conv(s)->set_padding(kIntMax); }));
  t.push_back(SpecCase("conv padding past the width limit", RE, "", ConvSpec,
                       [=](v1::ModelSpec* s) { conv(s)->set_padding(1 << 19); }));
  t.push_back(SpecCase("conv padding, kernel and stride at the limit", RE, "", ConvSpec,
                       [=](v1::ModelSpec* s) {
                         conv(s)->set_padding(1 << 20);
                         conv(s)->set_kernel_size(1 << 20);
                         conv(s)->set_stride(1);
                       }));
  AddWidthCases(&t, "conv filters", "filters", ConvSpec, {0, -3}, 5000,
                [=](v1::ModelSpec* s, int v) { conv(s)->set_filters(v); });
  t.push_back(SpecCase("conv2d on flat input", IA, "conv2d", ConvSpec, [](v1::ModelSpec* s) {
    s->clear_input_shape();
    s->add_input_shape(64);
  }));
  t.push_back(
      SpecCase("conv2d on [channels, length]", IA, "conv2d", ConvSpec, [](v1::ModelSpec* s) {
        s->clear_input_shape();
        s->add_input_shape(2);
        s->add_input_shape(32);
      }));
  t.push_back(SpecCase("conv1d on an image", IA, "conv1d", ConvSpec,
                       [=](v1::ModelSpec* s) { conv(s)->set_type("conv1d"); }));
  t.push_back(SpecCase("conv zero channels", IA, "input_shape", ConvSpec,
                       [](v1::ModelSpec* s) { s->set_input_shape(0, 0); }));
  t.push_back(SpecCase("conv input past the width limit", RE, "input_shape", ConvSpec,
                       [](v1::ModelSpec* s) {
                         s->set_input_shape(1, 2000);
                         s->set_input_shape(2, 2000);
                       }));
  t.push_back(SpecCase("conv input int max", RE, "input_shape", ConvSpec, [=](v1::ModelSpec* s) {
    s->set_input_shape(1, kIntMax);
    s->set_input_shape(2, kIntMax);
  }));
  t.push_back(
      SpecCase("conv output past the width limit", RE, "features", ConvSpec, [=](v1::ModelSpec* s) {
        s->set_input_shape(1, 1000);
        s->set_input_shape(2, 1000);
      }));
  t.push_back(SpecCase("dense on conv output without flatten", IA, "flat", ConvSpec,
                       [](v1::ModelSpec* s) { s->mutable_layers()->DeleteSubrange(3, 1); }));
  // Pooling.
  t.push_back(SpecCase("pool size negative", IA, "pool_size", ConvSpec,
                       [=](v1::ModelSpec* s) { pool(s)->set_pool_size(-1); }));
  t.push_back(SpecCase("pool larger than input", IA, "does not fit", ConvSpec,
                       [=](v1::ModelSpec* s) { pool(s)->set_pool_size(7); }));
  t.push_back(SpecCase("pool size huge", RE, "pool_size", ConvSpec,
                       [=](v1::ModelSpec* s) { pool(s)->set_pool_size(kIntMax); }));
  t.push_back(SpecCase("pool padding over half", IA, "padding", ConvSpec,
                       [=](v1::ModelSpec* s) { pool(s)->set_padding(2); }));
  t.push_back(SpecCase("pool padding huge", RE, "padding", ConvSpec, [=](v1::ModelSpec* s) {
    pool(s)->set_padding(kIntMax / 2 + 1);
    pool(s)->set_pool_size(kIntMax);
  }));
  t.push_back(SpecCase("avg pool stride negative", IA, "stride", ConvSpec, [=](v1::ModelSpec* s) {
    pool(s)->set_type("avg_pool2d");
    pool(s)->set_stride(-2);
  }));
  t.push_back(SpecCase("max_pool1d on an image", IA, "max_pool1d", ConvSpec,
                       [=](v1::ModelSpec* s) { pool(s)->set_type("max_pool1d"); }));
  t.push_back(SpecCase(
      "global_avg_pool on flat input", IA, "global_avg_pool",
      [] { return FlatSpec("global_avg_pool"); }, [](v1::ModelSpec*) {}));
  t.push_back(SpecCase(
      "spatial_dropout2d on flat input", IA, "spatial_dropout2d",
      [] { return FlatSpec("spatial_dropout2d"); }, [](v1::ModelSpec*) {}));
  t.push_back(
      SpecCase("spatial_dropout1d on an image", IA, "spatial_dropout1d", ConvSpec,
               [](v1::ModelSpec* s) { s->mutable_layers(1)->set_type("spatial_dropout1d"); }));
  t.push_back(SpecCase("spatial_dropout2d rate 1", IA, "rate", ConvSpec, [](v1::ModelSpec* s) {
    s->mutable_layers(1)->set_type("spatial_dropout2d");
    s->mutable_layers(1)->set_rate(1);
  }));
  t.push_back(SpecCase("conv1d control", OK, "", ConvSpec, [](v1::ModelSpec* s) {
    s->clear_input_shape();
    s->add_input_shape(2);
    s->add_input_shape(16);
    s->mutable_layers(0)->set_type("conv1d");
    s->mutable_layers(1)->set_type("spatial_dropout1d");
    s->mutable_layers(2)->set_type("avg_pool1d");
  }));

  // Recurrent.
  auto rnn = [](v1::ModelSpec* s) { return s->mutable_layers(0); };
  t.push_back(SpecCase("lstm control", OK, "", RnnSpec, [](v1::ModelSpec*) {}));
  t.push_back(
      SpecCase("gru control", OK, "", RnnSpec, [=](v1::ModelSpec* s) { rnn(s)->set_type("gru"); }));
  AddWidthCases(&t, "lstm units", "units", RnnSpec, {0, -1}, 100000,
                [=](v1::ModelSpec* s, int v) { rnn(s)->set_units(v); });
  t.push_back(SpecCase("lstm on flat input", IA, "steps", RnnSpec, [](v1::ModelSpec* s) {
    s->clear_input_shape();
    s->add_input_shape(15);
  }));
  t.push_back(SpecCase("gru on an image", IA, "steps", RnnSpec, [=](v1::ModelSpec* s) {
    rnn(s)->set_type("gru");
    s->clear_input_shape();
    for (int d : {1, 5, 3}) s->add_input_shape(d);
  }));
  for (const char* field : {"rate", "recurrent_rate", "zoneout_cell", "zoneout_hidden"}) {
    for (double v : {-0.1, 1.0, 1.5, kNaN, kInf}) {
      t.push_back(SpecCase(std::string("lstm ") + field + " " + std::to_string(v), IA, field,
                           RnnSpec, [=](v1::ModelSpec* s) {
                             auto* l = rnn(s);
                             const std::string f = field;
                             if (f == "rate")
                               l->set_rate(v);
                             else if (f == "recurrent_rate")
                               l->set_recurrent_rate(v);
                             else if (f == "zoneout_cell")
                               l->set_zoneout_cell(v);
                             else
                               l->set_zoneout_hidden(v);
                           }));
    }
  }
  t.push_back(SpecCase("gru zoneout_cell", IA, "zoneout_cell", RnnSpec, [=](v1::ModelSpec* s) {
    rnn(s)->set_type("gru");
    rnn(s)->set_zoneout_cell(0.1);
  }));
  t.push_back(SpecCase("lstm sequences into dense", IA, "flat", RnnSpec,
                       [=](v1::ModelSpec* s) { rnn(s)->set_return_sequences(true); }));
  t.push_back(
      SpecCase("lstm sequences past the width limit", RE, "width", RnnSpec, [=](v1::ModelSpec* s) {
        s->set_input_shape(0, 100000);
        s->set_input_shape(1, 1);
        rnn(s)->set_units(20);
        rnn(s)->set_return_sequences(true);
      }));
  t.push_back(SpecCase("stacked lstm control", OK, "", RnnSpec, [=](v1::ModelSpec* s) {
    rnn(s)->set_return_sequences(true);
    auto* l = s->mutable_layers()->Add();
    l->set_type("lstm");
    l->set_units(3);
    s->mutable_layers()->SwapElements(1, 2);
  }));

  // Learned rates, DropConnect and the rest of the flat layers.
  auto first = [](v1::ModelSpec* s) { return s->mutable_layers(0); };
  auto concrete = [] { return FlatSpec("concrete_dropout"); };
  t.push_back(SpecCase("concrete control", OK, "", concrete, [](v1::ModelSpec*) {}));
  for (double r : {0.0, 1.0, kNaN})
    t.push_back(SpecCase("concrete init_rate " + std::to_string(r), IA, "init_rate", concrete,
                         [=](v1::ModelSpec* s) { first(s)->set_init_rate(r); }));
  for (double v : {0.0, -1.0, kInf})
    t.push_back(SpecCase("concrete temperature " + std::to_string(v), IA, "temperature", concrete,
                         [=](v1::ModelSpec* s) { first(s)->set_temperature(v); }));
  for (double v : {-1.0, kInf})
    t.push_back(SpecCase("concrete length_scale " + std::to_string(v), IA, "length_scale", concrete,
                         [=](v1::ModelSpec* s) { first(s)->set_length_scale(v); }));
  for (double v : {-1.0, kNaN, kInf})
    t.push_back(SpecCase("concrete weight_regularizer " + std::to_string(v), IA, "regularizer",
                         concrete, [=](v1::ModelSpec* s) { first(s)->set_weight_regularizer(v); }));
  t.push_back(SpecCase("concrete dropout_regularizer inf", IA, "regularizer", concrete,
                       [=](v1::ModelSpec* s) { first(s)->set_dropout_regularizer(kInf); }));
  t.push_back(SpecCase("concrete units negative", IA, "units", concrete,
                       [=](v1::ModelSpec* s) { first(s)->set_units(-1); }));
  auto sparse = [] { return FlatSpec("sparse_vd", 8); };
  t.push_back(SpecCase("sparse_vd control", OK, "", sparse, [](v1::ModelSpec*) {}));
  t.push_back(SpecCase("sparse_vd units zero", IA, "units", sparse,
                       [=](v1::ModelSpec* s) { first(s)->set_units(0); }));
  t.push_back(SpecCase("sparse_vd units huge", RE, "", sparse,
                       [=](v1::ModelSpec* s) { first(s)->set_units(kIntMax); }));
  for (double v : {-1.0, kNaN, kInf})
    t.push_back(SpecCase("sparse_vd kl_weight " + std::to_string(v), IA, "kl_weight", sparse,
                         [=](v1::ModelSpec* s) { first(s)->set_kl_weight(v); }));
  t.push_back(SpecCase("sparse_vd log_sigma2_init NaN", IA, "log_sigma2_init", sparse,
                       [=](v1::ModelSpec* s) { first(s)->set_log_sigma2_init(kNaN); }));
  t.push_back(SpecCase("sparse_vd prune_threshold inf", IA, "prune_threshold", sparse,
                       [=](v1::ModelSpec* s) { first(s)->set_prune_threshold(kInf); }));
  auto dc = [] { return FlatSpec("drop_connect", 8); };
  t.push_back(SpecCase("drop_connect unknown activation", IA, "activation", dc,
                       [=](v1::ModelSpec* s) { first(s)->set_activation("bogus"); }));
  t.push_back(SpecCase("drop_connect units zero", IA, "units", dc,
                       [=](v1::ModelSpec* s) { first(s)->set_units(0); }));
  t.push_back(SpecCase("drop_connect on an image", IA, "flat", dc, [](v1::ModelSpec* s) {
    s->clear_input_shape();
    for (int d : {1, 2, 2}) s->add_input_shape(d);
  }));
  auto bn = [] { return FlatSpec("batch_norm"); };
  for (double m : {0.0, 1.5, kNaN})
    t.push_back(SpecCase("batch_norm momentum " + std::to_string(m), IA, "momentum", bn,
                         [=](v1::ModelSpec* s) { first(s)->set_momentum(m); }));
  for (double e : {0.0, -1.0, kNaN, kInf})
    t.push_back(SpecCase("batch_norm epsilon " + std::to_string(e), IA, "epsilon", bn,
                         [=](v1::ModelSpec* s) { first(s)->set_epsilon(e); }));
  for (double v : {kNaN, kInf})
    t.push_back(SpecCase(
        "leaky_relu negative_slope " + std::to_string(v), IA, "negative_slope",
        [] { return FlatSpec("leaky_relu"); },
        [=](v1::ModelSpec* s) { first(s)->set_negative_slope(v); }));
  t.push_back(SpecCase(
      "dense unknown init", IA, "init", [] { return FlatSpec("dense", 8); },
      [=](v1::ModelSpec* s) { first(s)->set_init("bogus"); }));
  // Heads.
  t.push_back(SpecCase(
      "classification with one output", IA, "2 outputs", [] { return FlatSpec("relu"); },
      [](v1::ModelSpec* s) { s->mutable_layers(1)->set_units(1); }));
  t.push_back(SpecCase(
      "regression with cross entropy", IA, "cross_entropy", [] { return FlatSpec("relu"); },
      [](v1::ModelSpec* s) {
        s->set_task(v1::TASK_REGRESSION);
        s->set_loss(v1::LOSS_CROSS_ENTROPY);
      }));
  t.push_back(SpecCase(
      "gaussian_nll with odd outputs", IA, "gaussian_nll", [] { return FlatSpec("relu"); },
      [](v1::ModelSpec* s) {
        s->set_task(v1::TASK_REGRESSION);
        s->set_loss(v1::LOSS_GAUSSIAN_NLL);
      }));
  return t;
}

void RunTable(v1::Dropnet::Stub* stub, const std::vector<Case>& table) {
  for (const Case& c : table) {
    grpc::Status s = c.call(stub);
    EXPECT_EQ(s.error_code(), c.code) << c.name << ": " << s.error_message();
    if (c.code == StatusCode::INVALID_ARGUMENT && !c.substr.empty()) {
      EXPECT_NE(s.error_message().find(c.substr), std::string::npos)
          << c.name << ": " << s.error_message();
    }
  }
}

TEST_F(BadInputTest, EveryCaseAnswersWithItsCode) {
  ASSERT_TRUE(Create(stub_.get(), "good", Spec()).ok());
  auto table = Table();
  RunTable(stub_.get(), table);
  std::cout << "cases: " << table.size() << "\n";
  EXPECT_TRUE(Unary(stub_.get(), &v1::Dropnet::Stub::Predict, ForGood<v1::PredictRequest>()).ok());
}

// Sends `bytes` as the request of `method` ("Predict", "PredictUncertainty").
grpc::Status CallWithBytes(grpc::Channel* channel, const std::string& method,
                           const std::string& bytes, grpc::ByteBuffer* answer) {
  const std::string name = "/dropnet.v1.Dropnet/" + method;
  const grpc::internal::RpcMethod rpc(name.c_str(), grpc::internal::RpcMethod::NORMAL_RPC);
  grpc::Slice slice(bytes.data(), bytes.size());
  grpc::ByteBuffer request(&slice, 1);
  auto c = Ctx();
  return grpc::internal::BlockingUnaryCall<grpc::ByteBuffer, grpc::ByteBuffer>(
      channel, rpc, c.get(), request, answer);
}

TEST_F(BadInputTest, RequestBytesThatAreNotAMessageAreAnInvalidArgument) {
  ASSERT_TRUE(Create(stub_.get(), "good", Spec()).ok());
  v1::PredictRequest r;
  r.set_model("good");
  r.mutable_inputs()->add_shape(1);
  r.mutable_inputs()->add_shape(4);
  for (float x : {0.1f, 0.2f, 0.3f, 0.4f}) r.mutable_inputs()->add_values(x);
  const std::string whole = r.SerializeAsString();
  for (const std::string method : {"Predict", "PredictUncertainty"}) {
    grpc::ByteBuffer answer;
    grpc::Status s =
        CallWithBytes(channel_.get(), method, whole.substr(0, whole.size() - 2), &answer);
    EXPECT_EQ(s.error_code(), StatusCode::INVALID_ARGUMENT) << method;
    EXPECT_NE(s.error_message().find("the request is not a valid dropnet.v1." + method +
                                     "Request message"),
              std::string::npos)
        << s.error_message();
  }
  // The values as one record each (unpacked), as protobuf also accepts them: the same answer.
  std::string unpacked = "\x0a\x04good";
  std::string tensor = "\x0a\x02\x01\x04";  // shape [1, 4], packed
  for (float x : r.inputs().values()) {
    tensor += '\x15';  // field 2, fixed32
    tensor.append(reinterpret_cast<const char*>(&x), 4);
  }
  unpacked += '\x12';
  unpacked += static_cast<char>(tensor.size());
  unpacked += tensor;
  grpc::ByteBuffer answer;
  ASSERT_TRUE(CallWithBytes(channel_.get(), "Predict", unpacked, &answer).ok());
  v1::PredictResponse from_bytes, from_stub;
  std::vector<grpc::Slice> slices;
  ASSERT_TRUE(answer.Dump(&slices).ok());
  std::string answer_bytes;
  for (const auto& sl : slices) {
    answer_bytes.append(reinterpret_cast<const char*>(sl.begin()), sl.size());
  }
  ASSERT_TRUE(from_bytes.ParseFromString(answer_bytes));
  auto c = Ctx();
  ASSERT_TRUE(stub_->Predict(c.get(), r, &from_stub).ok());
  ASSERT_EQ(from_bytes.outputs().values_size(), 3);
  for (int i = 0; i < 3; ++i) {
    EXPECT_EQ(from_bytes.outputs().values(i), from_stub.outputs().values(i));
  }
}

void WriteFile(const fs::path& p, const std::string& bytes) {
  fs::create_directories(p.parent_path());
  std::ofstream out(p, std::ios::binary);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

// `bytes`, then `zeros` zero bytes, gzipped.
void WriteGzip(const fs::path& p, const std::string& bytes, size_t zeros = 0) {
  gzFile f = gzopen(p.c_str(), "wb");
  ASSERT_NE(f, nullptr);
  gzwrite(f, bytes.data(), static_cast<unsigned>(bytes.size()));
  const std::string block(1 << 16, '\0');
  for (size_t done = 0; done < zeros; done += block.size()) {
    gzwrite(f, block.data(), static_cast<unsigned>(std::min(block.size(), zeros - done)));
  }
  gzclose(f);
}

std::string BigEndian(std::initializer_list<uint32_t> values) {
  std::string s;
  for (uint32_t v : values)
    for (int shift = 24; shift >= 0; shift -= 8) s.push_back(static_cast<char>(v >> shift));
  return s;
}

TEST_F(BadInputTest, ImportTrainEvaluateAndLayerFamilies) {
  ASSERT_TRUE(Create(stub_.get(), "good", Spec()).ok());
  ASSERT_TRUE(UploadTable(stub_.get(), "cls4", v1::TASK_CLASSIFICATION, 4, 12, 3).ok());
  ASSERT_TRUE(UploadTable(stub_.get(), "cls5", v1::TASK_CLASSIFICATION, 5, 12, 3).ok());
  ASSERT_TRUE(UploadTable(stub_.get(), "reg4", v1::TASK_REGRESSION, 4, 12, 0).ok());
  ASSERT_TRUE(UploadTable(stub_.get(), "cls4x6", v1::TASK_CLASSIFICATION, 4, 12, 6).ok());
  // The data root, and a file just outside it.
  const fs::path root = dir_ / "data";
  WriteFile(dir_ / "outside.csv", "a,b,label\n1,2,0\n");
  std::string ok = "f0,f1,f2,f3,label\n";
  for (int r = 0; r < 12; ++r)
    ok += "0.1,0.2,0.3," + std::to_string(r) + "," + std::to_string(r % 3) + "\n";
  WriteFile(root / "ok.csv", ok);
  WriteFile(root / "ok.txt", ok);
  WriteFile(root / "words.csv", "a,b,label\n1,2,0\n3,four,1\n");
  WriteFile(root / "empty.csv", "");
  WriteFile(root / "header.csv", "a,b,label\n");
  WriteFile(root / "ragged.csv", "a,b,label\n1,2,0\n3,1\n");
  WriteFile(root / "strings.csv", "a,b,label\n1,2,cat\n");
  WriteFile(root / "binary.csv", std::string("\x1f\x8b\0\xff\xfe,\0\n\x01\x02", 10));
  WriteFile(root / "sub" / "x.csv", ok);
  fs::create_symlink(dir_ / "outside.csv", root / "link.csv");
  // IDX: three 3x3 images, their three labels, two labels, a gzip stream cut in half, a gzip
  // stream with 64 MiB more pixels than its header announces, and a header announcing 2^56 pixels.
  std::string images = BigEndian({0x803, 3, 3, 3});
  for (int i = 0; i < 27; ++i) images.push_back(static_cast<char>(i * 9));
  WriteFile(root / "images-idx3-ubyte", images);
  WriteFile(root / "labels-idx1-ubyte", BigEndian({0x801, 3}) + std::string("\0\1\2", 3));
  WriteFile(root / "labels2-idx1-ubyte", BigEndian({0x801, 2}) + std::string("\0\1", 2));
  std::string many = BigEndian({0x803, 1000, 3, 3});
  for (int i = 0; i < 9000; ++i) many.push_back(static_cast<char>((i * 7919) % 251));
  WriteGzip(root / "full-idx3-ubyte.gz", many);
  {
    std::ifstream in(root / "full-idx3-ubyte.gz", std::ios::binary);
    const std::string gz((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    WriteFile(root / "cut-idx3-ubyte.gz", gz.substr(0, gz.size() / 2));
  }
  WriteGzip(root / "bomb-idx3-ubyte.gz", images, 64 << 20);
  WriteFile(root / "huge-idx3-ubyte", BigEndian({0x803, 0xffffffffu, 4096, 4096}) + "pixels");

  auto options = OptionsTable();
  RunTable(stub_.get(), options);
  auto families = FamilyTable();
  RunTable(stub_.get(), families);
  std::cout << "cases: " << options.size() << " options, " << families.size()
            << " layer families\n";
  // The server still answers.
  EXPECT_TRUE(Unary(stub_.get(), &v1::Dropnet::Stub::Predict, ForGood<v1::PredictRequest>()).ok());
}

}  // namespace
}  // namespace dropnet::service
