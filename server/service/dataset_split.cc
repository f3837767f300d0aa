// SplitDataset: the row assignment and the handler that stores the parts.
#include "server/service/dataset_split.h"

#include <algorithm>
#include <cmath>
#include <set>
#include <sstream>

#include "server/service/handler_common.h"
#include "server/service/service.h"

namespace dropnet::service {

using grpc::StatusCode;

namespace {

std::string FractionsText(const google::protobuf::RepeatedField<double>& fractions) {
  std::ostringstream s;
  for (int i = 0; i < fractions.size(); ++i) s << (i ? "," : "") << fractions.Get(i);
  return s.str();
}

}  // namespace

void CheckFractions(const google::protobuf::RepeatedField<double>& fractions) {
  double sum = 0;
  bool positive = true;
  for (double f : fractions) {
    positive = positive && std::isfinite(f) && f > 0;
    sum += f;
  }
  if (fractions.size() < 2 || !positive || std::abs(sum - 1.0) > 1e-6) {
    Fail(StatusCode::INVALID_ARGUMENT,
         "fractions must be two or more positive numbers that sum to 1 (e.g. 0.8,0.2), got '" +
             FractionsText(fractions) + "'");
  }
}

std::vector<std::vector<int64_t>> SplitRows(const engine::Dataset& d,
                                            const std::vector<double>& fractions, uint64_t seed) {
  const int64_t n = d.rows();
  std::vector<int64_t> order = engine::Permutation(n, seed);
  if (d.task == engine::Task::kClassification && d.y.cols() == 1) {
    // Classes in turn, each in its seeded order: dealing out this list keeps each class's share.
    std::stable_sort(order.begin(), order.end(),
                     [&](int64_t a, int64_t b) { return d.y(a, 0) < d.y(b, 0); });
  }
  const size_t k = fractions.size();
  std::vector<std::vector<int64_t>> parts(k);
  for (int64_t j = 0; j < n; ++j) {
    // The part furthest behind its quota after j + 1 rows takes row j.
    size_t best = 0;
    double best_lag = -1e300;
    for (size_t i = 0; i < k; ++i) {
      const double lag =
          fractions[i] * static_cast<double>(j + 1) - static_cast<double>(parts[i].size());
      if (lag > best_lag) best_lag = lag, best = i;
    }
    parts[best].push_back(order[j]);
  }
  for (size_t i = 0; i < k; ++i) {
    if (parts[i].empty()) {
      Fail(StatusCode::INVALID_ARGUMENT, "fraction " + std::to_string(fractions[i]) + " of " +
                                             std::to_string(n) + " rows leaves part " +
                                             std::to_string(i + 1) + " empty");
    }
    // Each part in its own seeded order, so that it is not sorted by class.
    const std::vector<int64_t> p = engine::Permutation(static_cast<int64_t>(parts[i].size()),
                                                       seed ^ (0x9e3779b97f4a7c15ULL * (i + 1)));
    std::vector<int64_t> shuffled(parts[i].size());
    for (size_t r = 0; r < p.size(); ++r) shuffled[r] = parts[i][p[r]];
    parts[i] = std::move(shuffled);
  }
  return parts;
}

std::vector<std::string> SplitNames(const v1::SplitDatasetRequest& req) {
  const int k = req.fractions_size();
  if (req.output_names_size() > 0) {
    if (req.output_names_size() != k) {
      Fail(StatusCode::INVALID_ARGUMENT, "output_names has " +
                                             std::to_string(req.output_names_size()) +
                                             " names for " + std::to_string(k) + " fractions");
    }
    return {req.output_names().begin(), req.output_names().end()};
  }
  if (k == 2) return {req.name() + "-train", req.name() + "-test"};
  if (k == 3) return {req.name() + "-train", req.name() + "-validation", req.name() + "-test"};
  std::vector<std::string> names;
  for (int i = 0; i < k; ++i) names.push_back(req.name() + "-" + std::to_string(i + 1));
  return names;
}

grpc::Status DropnetService::SplitDataset(grpc::ServerContext* ctx,
                                          const v1::SplitDatasetRequest* req,
                                          v1::SplitDatasetResponse* resp) {
  return Handle("SplitDataset", ctx, Role::kAdmin, [&](CallLog& log) {
    log.model = req->name();
    if (req->name().empty()) Fail(StatusCode::INVALID_ARGUMENT, "name is required");
    CheckFractions(req->fractions());
    const std::vector<std::string> names = SplitNames(*req);
    std::set<std::string> seen;
    for (const auto& name : names) {
      if (name == req->name() || !seen.insert(name).second) {
        Fail(StatusCode::INVALID_ARGUMENT,
             "output name '" + name + "' repeats the source or another part");
      }
    }
    const auto entry = registry_->GetDataset(req->name());
    if (!req->overwrite()) {
      // Refuse before writing any part, so that a refused split leaves nothing behind.
      for (const auto& info : registry_->ListDatasets()) {
        if (seen.count(info.name())) {
          Fail(StatusCode::ALREADY_EXISTS,
               "data set '" + info.name() + "' exists; set overwrite to replace it");
        }
      }
    }
    const std::vector<double> fractions(req->fractions().begin(), req->fractions().end());
    const auto parts = SplitRows(*entry.data, fractions, req->seed());
    log.rows = entry.data->rows();
    for (size_t i = 0; i < parts.size(); ++i) {
      std::ostringstream source;
      source << "split of '" << req->name() << "' (fraction " << fractions[i] << ", seed "
             << req->seed() << ")";
      *resp->add_datasets() = registry_->PutDataset(names[i], engine::Subset(*entry.data, parts[i]),
                                                    source.str(), req->overwrite());
    }
    return grpc::Status::OK;
  });
}

}  // namespace dropnet::service
