// The transforms a model carries with it: the input scale and standardisation it applies to every
// request's inputs, and the target standardisation a regression model learns under and undoes in
// every answer (means shifted and scaled back, spreads scaled, variances scaled by scale^2,
// log-likelihoods with the -log(scale) Jacobian). Also the IDX import's raw-pixel rule.
#ifndef DROPNET_SERVICE_TRANSFORM_H_
#define DROPNET_SERVICE_TRANSFORM_H_

#include <cstdint>

#include "server/engine/data.h"
#include "server/engine/mc.h"
#include "server/engine/tensor.h"
#include "server/service/snapshot.h"

namespace dropnet::service {

// A request's inputs in the network's units: x * input_scale, then the input standardisation.
void ApplyInputTransform(const Snapshot& s, engine::Matrix* x);

// The first `rows` rows of a stored data set in the network's units: the data set's own
// input_scale (its rows are as its file held them), then the model's standardisation.
engine::Matrix DatasetInputs(const Snapshot& s, const engine::Dataset& d, int64_t rows);
// The same for rows [first, first + rows) of the data set.
engine::Matrix DatasetInputs(const Snapshot& s, const engine::Dataset& d, int64_t first,
                             int64_t rows);

// Regression targets in the network's units: (y - mean) / scale (identity when t is empty).
void StandardizeTargets(const engine::Standardizer& t, engine::Matrix* y);

// Network outputs back in the target's units: mean + scale * m; variances times scale^2.
// Either pointer may be null or empty.
void UnstandardizeOutputs(const engine::Standardizer& t, engine::Matrix* mean,
                          engine::Matrix* variance);

// A Monte-Carlo result back in the target's units: mean, std, total variance, intervals, kept
// samples and per-row log-likelihoods (minus the sum over columns of log scale).
void UnstandardizeMc(const engine::Standardizer& t, engine::McResult* r);

// Sum over target columns of log scale: the Jacobian a per-row log-likelihood loses.
double LogScaleSum(const engine::Standardizer& t);

// IDX images as the file held them: pixels 0..255 with input_scale 1/255 (the engine reads them
// scaled to 0..1).
void KeepRawPixels(engine::Dataset* d);

}  // namespace dropnet::service

#endif  // DROPNET_SERVICE_TRANSFORM_H_
