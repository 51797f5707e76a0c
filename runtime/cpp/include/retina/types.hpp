// Value types shared by the C++ API: images in, detections out, one exception type.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

namespace retina {

// Why a call failed; the C API returns the same values as retina_status.
enum class ErrorCode : int {
  kInvalidArgument = 1,  // null pointer, bad option, out-of-range value
  kImage = 2,            // zero-size image, stride smaller than a row, too many pixels
  kModelFile = 3,        // missing / unreadable / tampered engine, or a manifest that does not describe it
  kUnavailable = 4,      // built without TensorRT, no GPU, library version mismatch
  kBackend = 5,          // the inference backend failed while running
  kQueueFull = 6,        // the batching queue holds max_queue requests
  kClosed = 7,           // the batching queue was closed
  kInternal = 8,
};

class Error : public std::runtime_error {
 public:
  Error(ErrorCode code, const std::string& message) : std::runtime_error(message), code_(code) {}
  ErrorCode code() const noexcept { return code_; }

 private:
  ErrorCode code_;
};

enum class ChannelOrder { kRGB, kBGR };

// A borrowed HWC uint8 image with 3 channels. row_stride is in bytes, >= 3 * width.
struct ImageView {
  const std::uint8_t* data = nullptr;
  int width = 0;
  int height = 0;
  std::size_t row_stride = 0;
  ChannelOrder order = ChannelOrder::kRGB;
};

// One detection; box is xyxy in the original image's pixels, 0 <= x1 <= x2 <= width.
struct Detection {
  std::array<float, 4> box{};
  float score = 0.0f;
  int class_id = 0;
  std::string class_name;
};

// Detections of one image, by descending score.
struct Detections {
  std::vector<Detection> items;
  std::size_t size() const noexcept { return items.size(); }
  bool empty() const noexcept { return items.empty(); }
};

}  // namespace retina
