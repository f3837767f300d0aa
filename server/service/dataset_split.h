// SplitDataset's row assignment: a stored data set cut into parts by fractions, its rows shuffled
// by a seed (the same seed, the same parts), classification rows stratified so that every part
// keeps each class's share. The handler (dataset_split.cc) stores each part as a new data set.
#ifndef DROPNET_SERVICE_DATASET_SPLIT_H_
#define DROPNET_SERVICE_DATASET_SPLIT_H_

#include <cstdint>
#include <string>
#include <vector>

#include "dropnet/v1/service.pb.h"
#include "server/engine/data.h"

namespace dropnet::service {

// Throws INVALID_ARGUMENT unless there are at least two fractions, each finite and > 0, summing
// to 1 (within 1e-6).
void CheckFractions(const google::protobuf::RepeatedField<double>& fractions);

// The rows of each part, in a seeded order. Part i gets round(fractions[i] * rows) rows (give or
// take one); classification rows are dealt out class by class, so each part holds each class in
// about the same share. Throws INVALID_ARGUMENT when a part would be empty.
std::vector<std::vector<int64_t>> SplitRows(const engine::Dataset& d,
                                            const std::vector<double>& fractions, uint64_t seed);

// The names of the parts: the request's output_names, or NAME-train and NAME-test (two parts),
// NAME-train, NAME-validation and NAME-test (three), NAME-1 ... NAME-k (more).
std::vector<std::string> SplitNames(const v1::SplitDatasetRequest& req);

}  // namespace dropnet::service

#endif  // DROPNET_SERVICE_DATASET_SPLIT_H_
