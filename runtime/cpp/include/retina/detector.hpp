// retina::Detector: an engine file in, detections in each original image's pixels out.
#pragma once

#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "retina/backend.hpp"
#include "retina/manifest.hpp"
#include "retina/types.hpp"

namespace retina {

struct Options {
  int device = 0;                          // CUDA device index
  bool cuda_graphs = false;                // capture one CUDA graph per batch size (TensorRT backend)
  std::int64_t max_pixels = 64'000'000;    // largest accepted image (width * height)
  bool check_gpu = true;                   // refuse an engine whose manifest names another GPU
};

// A preprocessed image waiting for a batch: chw float32 [3, H, W] and where it came from.
struct PreparedImage {
  std::vector<float> chw;
  double scale = 1.0;
  int height = 0;  // original size
  int width = 0;
};

// Thread-safe; calls into the backend are serialised.
class Detector {
 public:
  // Reads and checks "<engine_path>.json" (fields and types, sha256 of the engine's bytes before they are
  // deserialized, TensorRT flavour/version, GPU), then opens the TensorRT backend. Throws Error:
  // kModelFile (missing, tampered or mismatched), kUnavailable (no TensorRT in this build, no GPU).
  static std::unique_ptr<Detector> load(const std::string& engine_path, const Options& options = {});

  // A detector over any backend (tests, other runtimes); spec gives classes, preprocessing, NMS, batch range.
  Detector(std::unique_ptr<Backend> backend, ModelSpec spec, const Options& options = {});

  // One Detections per image; lists longer than the maximum batch run in chunks.
  std::vector<Detections> detect(const std::vector<ImageView>& images);

  // Validates and preprocesses one image (any thread; no backend call). `index` names it in errors.
  PreparedImage prepare(const ImageView& image, int index = -1) const;
  // Runs prepared images in chunks of at most max_batch().
  std::vector<Detections> run_prepared(const std::vector<const PreparedImage*>& prepared);

  const ModelSpec& spec() const noexcept { return spec_; }
  int min_batch() const noexcept { return spec_.batch_range[0]; }
  int max_batch() const noexcept { return spec_.batch_range[2]; }
  std::string describe() const { return backend_->describe(); }

 private:
  std::vector<Detections> run_chunk(const std::vector<const PreparedImage*>& chunk);

  std::unique_ptr<Backend> backend_;
  ModelSpec spec_;
  Options options_;
  std::mutex mutex_;
  std::vector<float> batch_;  // reused input buffer [max_batch, 3, H, W]
};

// Splits n images into chunks of at most max_batch; each chunk runs padded up to min_batch.
// Returns (start, count) pairs.
std::vector<std::pair<int, int>> chunk_request(int n, int max_batch);

}  // namespace retina
