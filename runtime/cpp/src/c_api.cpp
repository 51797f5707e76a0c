// The C API: C++ objects behind opaque handles; every exception becomes a status and a thread-local message.
#include "retina/retina.h"

#include <fstream>
#include <memory>
#include <new>
#include <sstream>
#include <string>
#include <vector>

#include "backend_factory.hpp"
#include "retina/batching.hpp"
#include "retina/detector.hpp"

struct retina_detector {
  std::unique_ptr<retina::Detector> impl;
};

struct retina_batcher {
  std::unique_ptr<retina::BatchingDetector> impl;
};

namespace {

thread_local std::string last_error;

// A result and the storage its pointers refer to; `view` is what the caller sees.
struct ResultStorage {
  retina_result view{};
  std::vector<std::size_t> counts, offsets;
  std::vector<retina_detection> detections;
  std::vector<std::string> names;
};

retina_status fail(retina_status status, const std::string& message) {
  last_error = message;
  return status;
}

template <typename F>
retina_status guarded(F&& body) noexcept {
  try {
    last_error.clear();
    return body();
  } catch (const retina::Error& e) {
    return fail(static_cast<retina_status>(e.code()), e.what());
  } catch (const std::bad_alloc&) {
    return fail(RETINA_ERR_INTERNAL, "out of memory");
  } catch (const std::exception& e) {
    return fail(RETINA_ERR_INTERNAL, e.what());
  } catch (...) {
    return fail(RETINA_ERR_INTERNAL, "unknown error");
  }
}

retina::Options to_options(const retina_options* o) {
  retina::Options options;
  if (o) {
    options.device = o->device;
    options.cuda_graphs = o->cuda_graphs != 0;
    if (o->max_pixels > 0) options.max_pixels = o->max_pixels;
  }
  return options;
}

retina::ImageView to_view(const retina_image& image, std::size_t index) {
  if (image.order != RETINA_RGB && image.order != RETINA_BGR) {
    throw retina::Error(retina::ErrorCode::kImage, "images[" + std::to_string(index) + "]: unknown channel order");
  }
  return {image.data, image.width, image.height, image.row_stride,
          image.order == RETINA_BGR ? retina::ChannelOrder::kBGR : retina::ChannelOrder::kRGB};
}

retina_result* make_result(const std::vector<retina::Detections>& all) {
  auto storage = std::make_unique<ResultStorage>();
  std::size_t total = 0;
  for (const retina::Detections& d : all) {
    storage->offsets.push_back(total);
    storage->counts.push_back(d.size());
    total += d.size();
  }
  storage->names.reserve(total);  // no reallocation: detections point into these strings
  for (const retina::Detections& d : all) {
    for (const retina::Detection& det : d.items) {
      storage->names.push_back(det.class_name);
      retina_detection c{};
      for (int k = 0; k < 4; ++k) c.box[k] = det.box[k];
      c.score = det.score;
      c.class_id = det.class_id;
      c.class_name = storage->names.back().c_str();
      storage->detections.push_back(c);
    }
  }
  storage->view = {all.size(), storage->counts.data(), storage->offsets.data(), storage->detections.data(),
                   storage.get()};
  return &storage.release()->view;
}

// A backend that calls a C function (another runtime, a test double).
class CallbackBackend : public retina::Backend {
 public:
  CallbackBackend(retina_infer_fn fn, void* user, std::array<int, 2> size) : fn_(fn), user_(user), size_(size) {}

  retina::Outputs run(const float* input, int batch) override {
    retina_tensor tensors[4] = {};
    int32_t count = 4;
    if (fn_(user_, input, batch, size_[0], size_[1], tensors, &count) != 0) {
      throw retina::Error(retina::ErrorCode::kBackend, "the custom backend's infer function failed");
    }
    if (count < 0 || count > 4) throw retina::Error(retina::ErrorCode::kBackend, "custom backend returned a bad count");
    retina::Outputs out;
    for (int i = 0; i < count; ++i) {
      const retina_tensor& t = tensors[i];
      if (t.name == nullptr || t.ndim < 1 || t.ndim > 4) {
        throw retina::Error(retina::ErrorCode::kBackend, "custom backend returned a tensor without name or shape");
      }
      retina::TensorView v;
      v.data = t.data;
      if (t.dtype != RETINA_FLOAT32 && t.dtype != RETINA_INT32) {
        throw retina::Error(retina::ErrorCode::kBackend, "custom backend returned a tensor of unknown dtype");
      }
      v.dtype = t.dtype == RETINA_INT32 ? retina::DataType::kInt32 : retina::DataType::kFloat32;
      v.shape.assign(t.shape, t.shape + t.ndim);
      out[t.name] = v;
    }
    return out;
  }
  std::string describe() const override { return "custom C backend"; }

 private:
  retina_infer_fn fn_;
  void* user_;
  std::array<int, 2> size_;
};

}  // namespace

extern "C" {

retina_status retina_detector_create(const char* engine_path, const retina_options* options, retina_detector** out) {
  return guarded([&] {
    if (engine_path == nullptr || out == nullptr) return fail(RETINA_ERR_INVALID_ARGUMENT, "engine_path and out must not be NULL");
    *out = nullptr;
    auto handle = std::make_unique<retina_detector>();
    handle->impl = retina::Detector::load(engine_path, to_options(options));
    *out = handle.release();
    return RETINA_OK;
  });
}

retina_status retina_detector_create_custom(const char* manifest_path, retina_infer_fn infer, void* user,
                                            const retina_options* options, retina_detector** out) {
  return guarded([&] {
    if (manifest_path == nullptr || infer == nullptr || out == nullptr) {
      return fail(RETINA_ERR_INVALID_ARGUMENT, "manifest_path, infer and out must not be NULL");
    }
    *out = nullptr;
    std::ifstream in(manifest_path, std::ios::binary);
    if (!in) return fail(RETINA_ERR_MODEL_FILE, std::string(manifest_path) + ": no such manifest file");
    std::ostringstream text;
    text << in.rdbuf();
    retina::ModelSpec spec = retina::parse_manifest(text.str(), manifest_path).spec;
    auto backend = std::make_unique<CallbackBackend>(infer, user, spec.input_size);
    auto handle = std::make_unique<retina_detector>();
    handle->impl = std::make_unique<retina::Detector>(std::move(backend), std::move(spec), to_options(options));
    *out = handle.release();
    return RETINA_OK;
  });
}

retina_status retina_detector_detect(retina_detector* detector, const retina_image* images, size_t num_images,
                                     retina_result** out) {
  return guarded([&] {
    if (detector == nullptr || out == nullptr || (images == nullptr && num_images > 0)) {
      return fail(RETINA_ERR_INVALID_ARGUMENT, "detector, images and out must not be NULL");
    }
    *out = nullptr;
    std::vector<retina::ImageView> views;
    for (std::size_t i = 0; i < num_images; ++i) views.push_back(to_view(images[i], i));
    *out = make_result(detector->impl->detect(views));
    return RETINA_OK;
  });
}

void retina_detector_result_free(retina_result* result) {
  if (result != nullptr) delete static_cast<ResultStorage*>(result->internal);
}

void retina_detector_destroy(retina_detector* detector) { delete detector; }

retina_status retina_batcher_create(retina_detector* detector, int32_t max_batch, double max_delay_ms,
                                    int32_t max_queue, retina_batcher** out) {
  return guarded([&] {
    if (detector == nullptr || out == nullptr) return fail(RETINA_ERR_INVALID_ARGUMENT, "detector and out must not be NULL");
    *out = nullptr;
    retina::BatchingOptions options{max_batch, max_delay_ms, max_queue};
    auto handle = std::make_unique<retina_batcher>();
    handle->impl = std::make_unique<retina::BatchingDetector>(*detector->impl, options);
    *out = handle.release();
    return RETINA_OK;
  });
}

retina_status retina_batcher_detect(retina_batcher* batcher, const retina_image* image, retina_result** out) {
  return guarded([&] {
    if (batcher == nullptr || image == nullptr || out == nullptr) {
      return fail(RETINA_ERR_INVALID_ARGUMENT, "batcher, image and out must not be NULL");
    }
    *out = nullptr;
    retina::Detections dets = batcher->impl->detect_one(to_view(*image, 0));
    *out = make_result({std::move(dets)});
    return RETINA_OK;
  });
}

retina_status retina_batcher_close(retina_batcher* batcher) {
  return guarded([&] {
    if (batcher == nullptr) return fail(RETINA_ERR_INVALID_ARGUMENT, "batcher must not be NULL");
    batcher->impl->close();
    return RETINA_OK;
  });
}

retina_status retina_batcher_queued(const retina_batcher* batcher, size_t* out) {
  return guarded([&] {
    if (batcher == nullptr || out == nullptr) return fail(RETINA_ERR_INVALID_ARGUMENT, "batcher and out must not be NULL");
    *out = batcher->impl->queued();
    return RETINA_OK;
  });
}

void retina_batcher_destroy(retina_batcher* batcher) { delete batcher; }

const char* retina_last_error(void) { return last_error.c_str(); }

const char* retina_version(void) { return RETINA_RUNTIME_VERSION; }

int retina_has_tensorrt(void) { return retina::detail::has_tensorrt() ? 1 : 0; }

}  // extern "C"
