// The registry's version labels and per-model settings (serving label, retention), saved in the
// store before a call returns.
#include "server/service/registry.h"

#include <algorithm>
#include <string>
#include <vector>

#include "server/service/convert.h"
#include "server/service/status.h"

namespace dropnet::service {

void Registry::StoreSettings(const std::string& name, const v1::ModelSettings& settings) {
  store_->SaveSettings(name, settings);  // outside mu_: no reader waits for the disk
  std::lock_guard lock(mu_);
  Find(name).settings = settings;
}

void Registry::SetLabel(const std::string& name, const std::string& label, int64_t version) {
  CheckLabel("label", label);
  std::lock_guard write(write_mu_);
  v1::ModelSettings settings;
  {
    std::lock_guard lock(mu_);
    const Entry& e = Find(name);
    if (!std::binary_search(e.versions.begin(), e.versions.end(), version)) {
      Fail(grpc::StatusCode::NOT_FOUND,
           "model '" + name + "' has no version " + std::to_string(version));
    }
    auto m = e.meta.find(version);
    if (m != e.meta.end() && !m->second.error.empty()) {
      Fail(grpc::StatusCode::FAILED_PRECONDITION, "model '" + name + "' version " +
                                                      std::to_string(version) +
                                                      " is corrupt: " + m->second.error);
    }
    settings = e.settings;
  }
  (*settings.mutable_labels())[label] = version;
  StoreSettings(name, settings);
}

void Registry::RemoveLabel(const std::string& name, const std::string& label) {
  std::lock_guard write(write_mu_);
  v1::ModelSettings settings;
  {
    std::lock_guard lock(mu_);
    settings = Find(name).settings;
  }
  if (!settings.labels().count(label)) {
    Fail(grpc::StatusCode::NOT_FOUND,
         "model '" + name + "' has no label '" + Printable(label) + "'");
  }
  if (settings.serving_label() == label) {
    Fail(grpc::StatusCode::FAILED_PRECONDITION,
         "label '" + label + "' is model '" + name +
             "''s serving label; move it, or change the serving label first");
  }
  settings.mutable_labels()->erase(label);
  StoreSettings(name, settings);
}

void Registry::UpdateSettings(const std::string& name,
                              const std::optional<std::string>& serving_label,
                              const std::optional<int32_t>& keep_versions) {
  if (serving_label && !serving_label->empty()) CheckLabel("serving_label", *serving_label);
  if (keep_versions && *keep_versions < 0) {
    Fail(grpc::StatusCode::INVALID_ARGUMENT,
         "keep_versions must be >= 0, got " + std::to_string(*keep_versions));
  }
  std::lock_guard write(write_mu_);
  v1::ModelSettings settings;
  {
    std::lock_guard lock(mu_);
    settings = Find(name).settings;
  }
  if (serving_label) {
    if (!serving_label->empty() && !settings.labels().count(*serving_label)) {
      Fail(grpc::StatusCode::FAILED_PRECONDITION, "serving_label '" + *serving_label +
                                                      "' names no version of model '" + name +
                                                      "'; set it first (SetVersionLabel)");
    }
    settings.set_serving_label(*serving_label);
  }
  if (keep_versions) settings.set_keep_versions(*keep_versions);
  StoreSettings(name, settings);
}

}  // namespace dropnet::service
