// Table-driven malformed / hostile requests against the real in-process server: each case
// expects a status code (and, for INVALID_ARGUMENT, a substring of the message).
#include <gtest/gtest.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <filesystem>
#include <functional>
#include <limits>
#include <memory>
#include <string>
#include <vector>

#include <grpcpp/grpcpp.h>

#include "dropnet/v1/service.grpc.pb.h"
#include "server/service/server.h"

namespace dropnet::service {
namespace {

namespace fs = std::filesystem;
using grpc::StatusCode;
constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();
constexpr double kInf = std::numeric_limits<double>::infinity();

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

v1::ModelSpec Spec(int width = 4) {
  v1::ModelSpec s;
  s.add_input_shape(width);
  s.set_seed(1);
  auto* l = s.add_layers(); l->set_type("dense"); l->set_units(8);
  l = s.add_layers(); l->set_type("dropout"); l->set_rate(0.2);
  l = s.add_layers(); l->set_type("dense"); l->set_units(3);
  return s;
}

grpc::Status Create(v1::Dropnet::Stub* st, const std::string& name, const v1::ModelSpec& spec) {
  v1::CreateModelRequest r; r.set_name(name); *r.mutable_spec() = spec;
  v1::CreateModelResponse resp; auto c = Ctx();
  return st->CreateModel(c.get(), r, &resp);
}

Case CreateCase(std::string n, StatusCode code, std::string sub,
                std::function<void(v1::ModelSpec*)> mut, std::string model = "bad") {
  return {n, code, sub, [=](v1::Dropnet::Stub* st) {
            v1::ModelSpec s = Spec(); mut(&s); return Create(st, model, s);
          }};
}

Case PredictCase(std::string n, StatusCode code, std::string sub,
                 std::function<void(v1::PredictRequest*)> mut) {
  return {n, code, sub, [=](v1::Dropnet::Stub* st) {
            v1::PredictRequest r; r.set_model("good");
            r.mutable_inputs()->add_shape(1); r.mutable_inputs()->add_shape(4);
            for (int i = 0; i < 4; ++i) r.mutable_inputs()->add_values(0.5f);
            mut(&r); v1::PredictResponse resp; auto c = Ctx();
            return st->Predict(c.get(), r, &resp);
          }};
}

Case UncCase(std::string n, StatusCode code, std::string sub,
             std::function<void(v1::PredictUncertaintyRequest*)> mut) {
  return {n, code, sub, [=](v1::Dropnet::Stub* st) {
            v1::PredictUncertaintyRequest r; r.set_model("good");
            r.mutable_inputs()->add_shape(1); r.mutable_inputs()->add_shape(4);
            for (int i = 0; i < 4; ++i) r.mutable_inputs()->add_values(0.5f);
            r.set_samples(8);
            mut(&r); v1::PredictUncertaintyResponse resp; auto c = Ctx();
            return st->PredictUncertainty(c.get(), r, &resp);
          }};
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
    stub_.reset(); channel_.reset();
    server_->Shutdown(); server_->Wait(); server_.reset();
    std::error_code ec; fs::remove_all(dir_, ec);
  }
  fs::path dir_;
  std::unique_ptr<Server> server_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::Dropnet::Stub> stub_;
};

std::vector<Case> Table() {
  std::vector<Case> t;
  const auto IA = StatusCode::INVALID_ARGUMENT;
  const auto NF = StatusCode::NOT_FOUND;
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
  t.push_back(CreateCase("no input shape", IA, "", [](v1::ModelSpec* s) { s->clear_input_shape(); }));
  t.push_back(CreateCase("unknown layer", IA, "", [](v1::ModelSpec* s) { s->mutable_layers(0)->set_type("bogus"); }));
  t.push_back(CreateCase("units zero", IA, "", [](v1::ModelSpec* s) { s->mutable_layers(0)->set_units(0); }));
  t.push_back(CreateCase("units negative", IA, "", [](v1::ModelSpec* s) { s->mutable_layers(0)->set_units(-5); }));
  t.push_back(CreateCase("input dim zero", IA, "", [](v1::ModelSpec* s) { s->set_input_shape(0, 0); }));
  t.push_back(CreateCase("input dim negative", IA, "", [](v1::ModelSpec* s) { s->set_input_shape(0, -3); }));
  for (double r : {-0.1, 1.0, kNaN, kInf}) {
    t.push_back(CreateCase("dropout rate " + std::to_string(r), IA, "",
                           [r](v1::ModelSpec* s) { s->mutable_layers(1)->set_rate(r); }));
    t.push_back(CreateCase("gaussian_dropout rate " + std::to_string(r), IA, "", [r](v1::ModelSpec* s) {
      s->mutable_layers(1)->set_type("gaussian_dropout"); s->mutable_layers(1)->set_rate(r); }));
    t.push_back(CreateCase("alpha_dropout rate " + std::to_string(r), IA, "", [r](v1::ModelSpec* s) {
      s->mutable_layers(1)->set_type("alpha_dropout"); s->mutable_layers(1)->set_rate(r); }));
  }
  t.push_back(CreateCase("too many layers", StatusCode::RESOURCE_EXHAUSTED, "", [](v1::ModelSpec* s) {
    for (int i = 0; i < 40; ++i) { auto* l = s->add_layers(); l->set_type("relu"); } }));
  t.push_back(CreateCase("too many parameters", StatusCode::RESOURCE_EXHAUSTED, "",
                         [](v1::ModelSpec* s) { s->mutable_layers(0)->set_units(5000); }));
  t.push_back(CreateCase("tau NaN", IA, "", [](v1::ModelSpec* s) { s->set_tau(kNaN); }));
  t.push_back(CreateCase("tau negative", IA, "", [](v1::ModelSpec* s) { s->set_tau(-1); }));
  t.push_back(CreateCase("unknown task", IA, "", [](v1::ModelSpec* s) { s->set_task(static_cast<v1::Task>(77)); }));
  t.push_back(CreateCase("unknown loss", IA, "spec.loss", [](v1::ModelSpec* s) { s->set_loss(static_cast<v1::Loss>(77)); }));
  // Predict.
  auto pnf = [](v1::PredictRequest* r) { r->set_model("nope"); };
  t.push_back(PredictCase("predict unknown model", NF, "", pnf));
  t.push_back(PredictCase("predict empty tensor", IA, "", [](v1::PredictRequest* r) { r->clear_inputs(); }));
  t.push_back(PredictCase("predict count mismatch", IA, "", [](v1::PredictRequest* r) { r->mutable_inputs()->add_values(1); }));
  t.push_back(PredictCase("predict wrong width", IA, "", [](v1::PredictRequest* r) {
    r->mutable_inputs()->set_shape(1, 2); r->mutable_inputs()->mutable_values()->Truncate(2); }));
  t.push_back(PredictCase("predict negative dim", IA, "", [](v1::PredictRequest* r) { r->mutable_inputs()->set_shape(0, -1); }));
  for (int pos = 0; pos < 4; ++pos)
    for (float v : {std::nanf(""), INFINITY, -INFINITY})
      t.push_back(PredictCase("predict nonfinite " + std::to_string(v) + " at " + std::to_string(pos), IA, "",
                              [pos, v](v1::PredictRequest* r) { r->mutable_inputs()->set_values(pos, v); }));
  t.push_back(PredictCase("predict batch over limit", StatusCode::RESOURCE_EXHAUSTED, "", [](v1::PredictRequest* r) {
    r->mutable_inputs()->set_shape(0, 65);
    for (int i = 0; i < 64 * 4; ++i) r->mutable_inputs()->add_values(0); }));
  // PredictUncertainty.
  t.push_back(UncCase("unc unknown model", NF, "", [](v1::PredictUncertaintyRequest* r) { r->set_model("nope"); }));
  t.push_back(UncCase("unc samples negative", IA, "", [](v1::PredictUncertaintyRequest* r) { r->set_samples(-1); }));
  t.push_back(UncCase("unc samples over", StatusCode::RESOURCE_EXHAUSTED, "", [](v1::PredictUncertaintyRequest* r) { r->set_samples(101); }));
  for (double iv : {1.0, kNaN, -0.5})
    t.push_back(UncCase("unc interval " + std::to_string(iv), IA, "",
                        [iv](v1::PredictUncertaintyRequest* r) { r->set_interval(iv); }));
  t.push_back(UncCase("unc NaN input", IA, "", [](v1::PredictUncertaintyRequest* r) { r->mutable_inputs()->set_values(2, std::nanf("")); }));
  // More spec cases.
  for (double r : {-0.1, 1.0, kNaN}) {
    t.push_back(CreateCase("drop_connect rate " + std::to_string(r), IA, "", [r](v1::ModelSpec* s) {
      s->mutable_layers(1)->set_type("drop_connect"); s->mutable_layers(1)->set_units(8); s->mutable_layers(1)->set_rate(r); }));
  }
  t.push_back(CreateCase("input 4-D", IA, "input_shape", [](v1::ModelSpec* s) {
    s->add_input_shape(2); s->add_input_shape(2); s->add_input_shape(2); }));
  t.push_back(CreateCase("tau Inf", IA, "tau", [](v1::ModelSpec* s) { s->set_tau(kInf); }));
  // Dataset and training lookups.
  t.push_back({"delete unknown dataset", NF, "", [](v1::Dropnet::Stub* st) {
                 v1::DeleteDatasetRequest r; r.set_name("nope"); v1::DeleteDatasetResponse resp; auto c = Ctx();
                 return st->DeleteDataset(c.get(), r, &resp); }});
  t.push_back({"evaluate unknown model", NF, "", [](v1::Dropnet::Stub* st) {
                 v1::EvaluateRequest r; r.set_model("nope"); r.set_dataset("nope"); v1::EvaluateResponse resp; auto c = Ctx();
                 return st->Evaluate(c.get(), r, &resp); }});
  t.push_back({"upload no header", IA, "", [](v1::Dropnet::Stub* st) {
                 v1::UploadDatasetResponse resp; auto c = Ctx();
                 auto w = st->UploadDataset(c.get(), &resp);
                 v1::UploadDatasetRequest r; r.mutable_rows()->add_features(1); w->Write(r);
                 w->WritesDone(); return w->Finish(); }});
  t.push_back({"upload empty stream", IA, "", [](v1::Dropnet::Stub* st) {
                 v1::UploadDatasetResponse resp; auto c = Ctx();
                 auto w = st->UploadDataset(c.get(), &resp);
                 w->WritesDone(); return w->Finish(); }});
  for (const char* n : {"-lead", "_lead", "a\nb", "a:b", "a\\b", "a*b", "a%2e", "a?b", "/abs", "~home"})
    t.push_back(CreateCase(std::string("name ") + n, IA, "name", noop, n));
  for (int pos : {4, 7, 11})
    for (float v : {std::nanf(""), INFINITY, -INFINITY})
      t.push_back(PredictCase("batch3 nonfinite at " + std::to_string(pos) + " " + std::to_string(v), IA, "",
                              [pos, v](v1::PredictRequest* r) {
                                r->mutable_inputs()->set_shape(0, 3);
                                for (int i = 0; i < 8; ++i) r->mutable_inputs()->add_values(0.25f);
                                r->mutable_inputs()->set_values(pos, v); }));
  t.push_back(PredictCase("predict zero rows", IA, "", [](v1::PredictRequest* r) {
    r->mutable_inputs()->set_shape(0, 0); r->mutable_inputs()->clear_values(); }));
  t.push_back({"get unknown model", NF, "", [](v1::Dropnet::Stub* st) {
                 v1::GetModelRequest r; r.set_name("nope"); v1::GetModelResponse resp; auto c = Ctx();
                 return st->GetModel(c.get(), r, &resp); }});
  t.push_back({"evaluate unknown dataset", NF, "", [](v1::Dropnet::Stub* st) {
                 v1::EvaluateRequest r; r.set_model("good"); r.set_dataset("nope"); v1::EvaluateResponse resp; auto c = Ctx();
                 return st->Evaluate(c.get(), r, &resp); }});
  for (const char* m : {"nope", "good"})
    t.push_back({std::string("train unknown ") + m, NF, "", [m](v1::Dropnet::Stub* st) {
                   v1::TrainRequest r; r.set_model(m); r.set_dataset("nope"); r.set_epochs(1);
                   auto c = Ctx(); auto rd = st->Train(c.get(), r); v1::TrainEvent e;
                   while (rd->Read(&e)) {}
                   return rd->Finish(); }});
  for (int pos : {0, 1, 3})
    for (float v : {std::nanf(""), INFINITY, -INFINITY})
      t.push_back(UncCase("unc nonfinite at " + std::to_string(pos) + " " + std::to_string(v), IA, "",
                          [pos, v](v1::PredictUncertaintyRequest* r) { r->mutable_inputs()->set_values(pos, v); }));
  // Deletes and lookups.
  t.push_back({"delete unknown model", NF, "", [](v1::Dropnet::Stub* st) {
                 v1::DeleteModelRequest r; r.set_name("nope"); v1::DeleteModelResponse resp; auto c = Ctx();
                 return st->DeleteModel(c.get(), r, &resp); }});
  return t;
}

TEST_F(BadInputTest, EveryCaseAnswersWithItsCode) {
  ASSERT_TRUE(Create(stub_.get(), "good", Spec()).ok());
  auto table = Table();
  for (const Case& c : table) {
    grpc::Status s = c.call(stub_.get());
    EXPECT_EQ(s.error_code(), c.code) << c.name << ": " << s.error_message();
    if (c.code == StatusCode::INVALID_ARGUMENT && !c.substr.empty())
      EXPECT_NE(s.error_message().find(c.substr), std::string::npos) << c.name << ": " << s.error_message();
  }
  std::cout << "cases: " << table.size() << "\n";
  v1::PredictRequest r; r.set_model("good");
  r.mutable_inputs()->add_shape(1); r.mutable_inputs()->add_shape(4);
  for (int i = 0; i < 4; ++i) r.mutable_inputs()->add_values(0.1f);
  v1::PredictResponse resp; auto ctx = Ctx();
  EXPECT_TRUE(stub_->Predict(ctx.get(), r, &resp).ok());
}

}  // namespace
}  // namespace dropnet::service
