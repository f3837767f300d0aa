// Model specs for tests, written in the JSON of dropnet.v1.ModelSpec: the model file format that
// `dropnet models create --spec` reads, so a test's network reads as a user would write it.
#ifndef DROPNET_TESTS_TESTING_SPEC_JSON_H_
#define DROPNET_TESTS_TESTING_SPEC_JSON_H_

#include <string>
#include <string_view>

#include <google/protobuf/util/json_util.h>
#include <gtest/gtest.h>

#include "dropnet/v1/model.pb.h"

namespace dropnet::testing {

// The spec that `json` describes; a parse error fails the calling test and names the text.
inline v1::ModelSpec SpecFromJson(std::string_view json) {
  v1::ModelSpec spec;
  const auto status = google::protobuf::util::JsonStringToMessage(std::string(json), &spec);
  EXPECT_TRUE(status.ok()) << status.ToString() << " in " << json;
  return spec;
}

}  // namespace dropnet::testing

#endif  // DROPNET_TESTS_TESTING_SPEC_JSON_H_
