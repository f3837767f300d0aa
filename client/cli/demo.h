// `dropnet demo`: a tour of a server running the example model: Monte-Carlo dropout on
// Fashion-MNIST test images, a confident and an ambiguous item side by side with what each figure
// means.
#ifndef DROPNET_CLIENT_CLI_DEMO_H_
#define DROPNET_CLIENT_CLI_DEMO_H_

#include <string>

#include "client/client.h"

namespace dropnet::cli {

// Reads the test images from data_dir (Fashion-MNIST's IDX files); returns the exit status. When
// the model serves an untrained version (as created, random weights) it waits up to
// `wait_seconds` for a trained one, then says so and returns 1.
int Demo(client::Client& c, const std::string& data_dir, double wait_seconds = 60);

}  // namespace dropnet::cli

#endif  // DROPNET_CLIENT_CLI_DEMO_H_
