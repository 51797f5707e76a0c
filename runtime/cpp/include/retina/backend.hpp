// What runs the network: anything that turns a preprocessed batch into named output tensors.
#pragma once

#include <array>
#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace retina {

enum class DataType { kFloat32, kInt32 };

// A borrowed host tensor, C-order; valid until the backend's next run().
struct TensorView {
  const void* data = nullptr;
  DataType dtype = DataType::kFloat32;
  std::vector<std::int64_t> shape;
};

using Outputs = std::map<std::string, TensorView>;

class Backend {
 public:
  virtual ~Backend() = default;
  // Runs input float32 [batch, 3, H, W] (min_batch <= batch <= max_batch of the engine). Outputs are
  // "boxes" [B, N, 4] + "scores" [B, N, C] (--nms none), or "num_dets" [B, 1] int32, "boxes" [B, K, 4],
  // "scores" [B, K], "classes" [B, K] int32. Not called concurrently (the Detector serialises calls).
  virtual Outputs run(const float* input, int batch) = 0;
  // A short description for logs, e.g. "tensorrt 10.13.0 on NVIDIA H200".
  virtual std::string describe() const = 0;
};

}  // namespace retina
