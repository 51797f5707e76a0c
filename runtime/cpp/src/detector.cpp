// retina::Detector: one code path for every backend, as runtime/detector.py: validate and preprocess
// each image, chunk to the engine's batch range, run, host NMS for --nms none engines, map boxes back.
#include "retina/detector.hpp"

#include <algorithm>
#include <cstring>

#include "backend_factory.hpp"
#include "retina/postprocess.hpp"
#include "retina/preprocess.hpp"

namespace retina {
namespace {

const TensorView& output(const Outputs& outputs, const char* name, DataType dtype, std::size_t ndim, int batch) {
  auto it = outputs.find(name);
  if (it == outputs.end()) throw Error(ErrorCode::kBackend, std::string("model has no output '") + name + "'");
  const TensorView& t = it->second;
  if (t.data == nullptr || t.dtype != dtype || t.shape.size() != ndim || t.shape[0] < batch) {
    throw Error(ErrorCode::kBackend, std::string("model output '") + name + "' has an unexpected type or shape");
  }
  for (std::int64_t d : t.shape) {
    if (d < 0) throw Error(ErrorCode::kBackend, std::string("model output '") + name + "' has a negative dimension");
  }
  return t;
}

// Row `i` of the engine's detection outputs (--nms onnx / efficient), valid entries only.
InputDetections nms_row(const Outputs& outputs, int batch, int i) {
  const TensorView& num = output(outputs, "num_dets", DataType::kInt32, 2, batch);
  const TensorView& boxes = output(outputs, "boxes", DataType::kFloat32, 3, batch);
  const TensorView& scores = output(outputs, "scores", DataType::kFloat32, 2, batch);
  const TensorView& classes = output(outputs, "classes", DataType::kInt32, 2, batch);
  const std::int64_t k = scores.shape[1];
  if (boxes.shape[1] != k || boxes.shape[2] != 4 || classes.shape[1] != k || num.shape[1] != 1) {
    throw Error(ErrorCode::kBackend, "detection outputs num_dets / boxes / scores / classes disagree in shape");
  }
  const std::int64_t n = std::clamp<std::int64_t>(static_cast<const std::int32_t*>(num.data)[i], 0, k);
  InputDetections d;
  const float* b = static_cast<const float*>(boxes.data) + i * k * 4;
  const float* s = static_cast<const float*>(scores.data) + i * k;
  const std::int32_t* c = static_cast<const std::int32_t*>(classes.data) + i * k;
  for (std::int64_t j = 0; j < n; ++j) {
    d.boxes.push_back({b[4 * j], b[4 * j + 1], b[4 * j + 2], b[4 * j + 3]});
    d.scores.push_back(s[j]);
    d.classes.push_back(c[j]);
  }
  return d;
}

}  // namespace

std::vector<std::pair<int, int>> chunk_request(int n, int max_batch) {
  if (max_batch < 1) throw Error(ErrorCode::kInvalidArgument, "max_batch must be >= 1");
  std::vector<std::pair<int, int>> chunks;
  for (int start = 0; start < n; start += max_batch) chunks.emplace_back(start, std::min(max_batch, n - start));
  return chunks;
}

std::unique_ptr<Detector> Detector::load(const std::string& engine_path, const Options& options) {
  EngineManifest manifest = read_manifest(engine_path);
  std::vector<char> engine = read_verified_engine(engine_path, manifest);
  std::unique_ptr<Backend> backend = detail::open_engine(engine, manifest, options, engine_path);
  return std::make_unique<Detector>(std::move(backend), manifest.spec, options);
}

Detector::Detector(std::unique_ptr<Backend> backend, ModelSpec spec, const Options& options)
    : backend_(std::move(backend)), spec_(std::move(spec)), options_(options) {
  if (!backend_) throw Error(ErrorCode::kInvalidArgument, "Detector needs a backend");
  if (options_.max_pixels < 1) throw Error(ErrorCode::kInvalidArgument, "max_pixels must be >= 1");
  if (spec_.class_names.empty()) throw Error(ErrorCode::kInvalidArgument, "the model spec has no class names");
  if (spec_.batch_range[0] < 1 || spec_.batch_range[0] > spec_.batch_range[2]) {
    throw Error(ErrorCode::kInvalidArgument, "the model spec's batch range is invalid");
  }
}

PreparedImage Detector::prepare(const ImageView& image, int index) const {
  const std::string where = index < 0 ? "image" : "images[" + std::to_string(index) + "]";
  check_image(image, options_.max_pixels, where.c_str());
  PreparedImage p;
  const std::array<int, 2>& size = spec_.preprocess.size;
  p.chw.resize(3 * static_cast<std::size_t>(size[0]) * size[1]);
  p.scale = preprocess_into(image, spec_.preprocess, p.chw.data()).scale;
  p.height = image.height;
  p.width = image.width;
  return p;
}

std::vector<Detections> Detector::detect(const std::vector<ImageView>& images) {
  std::vector<Detections> results;
  results.reserve(images.size());
  for (auto [start, count] : chunk_request(static_cast<int>(images.size()), max_batch())) {
    std::vector<PreparedImage> prepared;  // per chunk: memory stays bounded
    std::vector<const PreparedImage*> ptrs;
    prepared.reserve(static_cast<std::size_t>(count));
    for (int i = 0; i < count; ++i) prepared.push_back(prepare(images[static_cast<std::size_t>(start + i)], start + i));
    for (const PreparedImage& p : prepared) ptrs.push_back(&p);
    std::vector<Detections> chunk = run_chunk(ptrs);
    std::move(chunk.begin(), chunk.end(), std::back_inserter(results));
  }
  return results;
}

std::vector<Detections> Detector::run_prepared(const std::vector<const PreparedImage*>& prepared) {
  std::vector<Detections> results;
  for (auto [start, count] : chunk_request(static_cast<int>(prepared.size()), max_batch())) {
    std::vector<const PreparedImage*> chunk(prepared.begin() + start, prepared.begin() + start + count);
    std::vector<Detections> out = run_chunk(chunk);
    std::move(out.begin(), out.end(), std::back_inserter(results));
  }
  return results;
}

std::vector<Detections> Detector::run_chunk(const std::vector<const PreparedImage*>& chunk) {
  const int b = static_cast<int>(chunk.size());
  const int run_b = std::max(b, min_batch());  // a profile that starts above 1: pad with blank images
  const std::size_t per_image = 3 * static_cast<std::size_t>(spec_.preprocess.size[0]) * spec_.preprocess.size[1];
  const int num_classes = static_cast<int>(spec_.class_names.size());
  std::vector<InputDetections> rows(static_cast<std::size_t>(b));
  {
    std::lock_guard<std::mutex> lock(mutex_);
    batch_.assign(per_image * run_b, 0.0f);
    for (int i = 0; i < b; ++i) {
      if (chunk[i] == nullptr || chunk[i]->chw.size() != per_image) {
        throw Error(ErrorCode::kInvalidArgument, "prepared image has the wrong size");
      }
      std::memcpy(&batch_[per_image * i], chunk[i]->chw.data(), per_image * sizeof(float));
    }
    const Outputs outputs = backend_->run(batch_.data(), run_b);
    for (int i = 0; i < b; ++i) {
      if (spec_.nms.mode != "none") {
        rows[i] = nms_row(outputs, run_b, i);
        continue;
      }
      const TensorView& boxes = output(outputs, "boxes", DataType::kFloat32, 3, run_b);
      const TensorView& scores = output(outputs, "scores", DataType::kFloat32, 3, run_b);
      const std::int64_t n = boxes.shape[1];
      if (boxes.shape[2] != 4 || scores.shape[1] != n || scores.shape[2] != num_classes) {
        throw Error(ErrorCode::kBackend, "dense outputs boxes / scores do not match " + std::to_string(num_classes) +
                                             " classes");
      }
      rows[i] = detections_from_dense(static_cast<const float*>(boxes.data) + i * n * 4,
                                      static_cast<const float*>(scores.data) + i * n * num_classes, n, num_classes,
                                      spec_.anchors_per_level, spec_.nms);
    }
  }
  std::vector<Detections> results;
  for (int i = 0; i < b; ++i) {
    results.push_back(to_original(rows[i], chunk[i]->scale, chunk[i]->height, chunk[i]->width, spec_.class_names));
  }
  return results;
}

}  // namespace retina
