// The preprocessing definition of runtime/preprocess.py, step for step (this file must be compiled with
// -ffp-contract=off: a fused multiply-add would change the filter coefficients' last bits).
#include "retina/preprocess.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>

namespace retina {
namespace {

constexpr int kPrecisionBits = 32 - 8 - 2;  // fixed-point fraction bits of the filter weights

// Filter taps of one axis: output i reads input[bounds[2i] .. bounds[2i] + bounds[2i+1]) with weights
// kk[i * ksize ..], in fixed point.
struct Taps {
  int ksize = 0;
  std::vector<int> bounds;
  std::vector<std::int32_t> kk;
};

double triangle(double x) {
  if (x < 0.0) x = -x;
  return x < 1.0 ? 1.0 - x : 0.0;
}

Taps precompute(int in_size, int out_size) {
  const double scale = static_cast<double>(in_size) / out_size;
  const double filterscale = scale < 1.0 ? 1.0 : scale;  // widen the filter when shrinking (antialiasing)
  const double support = 1.0 * filterscale;
  Taps t;
  t.ksize = static_cast<int>(std::ceil(support)) * 2 + 1;
  t.bounds.resize(2 * static_cast<std::size_t>(out_size));
  t.kk.assign(static_cast<std::size_t>(out_size) * t.ksize, 0);
  std::vector<double> k(static_cast<std::size_t>(t.ksize));
  for (int xx = 0; xx < out_size; ++xx) {
    const double center = (xx + 0.5) * scale;
    const double ss = 1.0 / filterscale;
    int xmin = static_cast<int>(center - support + 0.5);
    if (xmin < 0) xmin = 0;
    int xmax = static_cast<int>(center + support + 0.5);
    if (xmax > in_size) xmax = in_size;
    xmax -= xmin;
    double ww = 0.0;
    for (int x = 0; x < xmax; ++x) {
      const double w = triangle((x + xmin - center + 0.5) * ss);
      k[x] = w;
      ww += w;
    }
    for (int x = 0; x < xmax; ++x) {
      if (ww != 0.0) k[x] /= ww;
      const double fixed = k[x] * (1 << kPrecisionBits);
      t.kk[static_cast<std::size_t>(xx) * t.ksize + x] =
          static_cast<std::int32_t>(k[x] < 0 ? -0.5 + fixed : 0.5 + fixed);
    }
    t.bounds[2 * xx] = xmin;
    t.bounds[2 * xx + 1] = xmax;
  }
  return t;
}

inline std::uint8_t clip8(std::int32_t v) {
  if (v >= (1 << kPrecisionBits << 8)) return 255;
  if (v <= 0) return 0;
  return static_cast<std::uint8_t>(v >> kPrecisionBits);
}

// src rows of `stride` bytes, 3 channels; dst packed.
void horizontal(const std::uint8_t* src, std::size_t stride, int rows, int out_w, const Taps& t, std::uint8_t* dst) {
  for (int y = 0; y < rows; ++y) {
    const std::uint8_t* row = src + static_cast<std::size_t>(y) * stride;
    std::uint8_t* out = dst + static_cast<std::size_t>(y) * out_w * 3;
    for (int xx = 0; xx < out_w; ++xx) {
      const int xmin = t.bounds[2 * xx], xmax = t.bounds[2 * xx + 1];
      const std::int32_t* k = &t.kk[static_cast<std::size_t>(xx) * t.ksize];
      std::int32_t s0 = 1 << (kPrecisionBits - 1), s1 = s0, s2 = s0;
      for (int x = 0; x < xmax; ++x) {
        const std::uint8_t* p = row + static_cast<std::size_t>(x + xmin) * 3;
        s0 += p[0] * k[x];
        s1 += p[1] * k[x];
        s2 += p[2] * k[x];
      }
      out[3 * xx] = clip8(s0);
      out[3 * xx + 1] = clip8(s1);
      out[3 * xx + 2] = clip8(s2);
    }
  }
}

void vertical(const std::uint8_t* src, std::size_t stride, int width, int out_h, const Taps& t, std::uint8_t* dst) {
  for (int yy = 0; yy < out_h; ++yy) {
    const int ymin = t.bounds[2 * yy], ymax = t.bounds[2 * yy + 1];
    const std::int32_t* k = &t.kk[static_cast<std::size_t>(yy) * t.ksize];
    std::uint8_t* out = dst + static_cast<std::size_t>(yy) * width * 3;
    for (int c = 0; c < width * 3; ++c) {
      std::int32_t s = 1 << (kPrecisionBits - 1);
      for (int y = 0; y < ymax; ++y) s += src[static_cast<std::size_t>(y + ymin) * stride + c] * k[y];
      out[c] = clip8(s);
    }
  }
}

}  // namespace

Letterbox letterbox(int height, int width, const std::array<int, 2>& size) {
  Letterbox lb;
  lb.scale = std::min(static_cast<double>(size[0]) / height, static_cast<double>(size[1]) / width);
  // Python's round(): half to even, which std::nearbyint does in the default rounding mode.
  lb.resized_height = std::min(size[0], std::max(1, static_cast<int>(std::nearbyint(height * lb.scale))));
  lb.resized_width = std::min(size[1], std::max(1, static_cast<int>(std::nearbyint(width * lb.scale))));
  return lb;
}

void check_image(const ImageView& image, std::int64_t max_pixels, const char* where) {
  const std::string at = where ? where : "image";
  if (image.data == nullptr) throw Error(ErrorCode::kImage, at + ": image data is null");
  if (image.width < 1 || image.height < 1) {
    throw Error(ErrorCode::kImage, at + ": image of " + std::to_string(image.width) + "x" +
                                       std::to_string(image.height) + " pixels is empty");
  }
  if (image.row_stride < static_cast<std::size_t>(image.width) * 3) {
    throw Error(ErrorCode::kImage, at + ": row stride " + std::to_string(image.row_stride) +
                                       " bytes is smaller than a row of " + std::to_string(image.width) +
                                       " RGB pixels (" + std::to_string(image.width * 3) + " bytes)");
  }
  if (static_cast<std::int64_t>(image.width) * image.height > max_pixels) {
    throw Error(ErrorCode::kImage, at + ": " + std::to_string(image.width) + "x" + std::to_string(image.height) +
                                       " exceeds max_pixels=" + std::to_string(max_pixels));
  }
  if (image.order != ChannelOrder::kRGB && image.order != ChannelOrder::kBGR) {
    throw Error(ErrorCode::kImage, at + ": unknown channel order");
  }
}

std::vector<std::uint8_t> resize_bilinear(const ImageView& image, int new_height, int new_width) {
  const bool need_h = new_width != image.width, need_v = new_height != image.height;
  const std::uint8_t* src = image.data;
  std::size_t stride = image.row_stride;
  int rows_first = 0, rows = image.height;
  Taps vt;
  if (need_v) {  // the horizontal pass only computes the rows the vertical pass reads
    vt = precompute(image.height, new_height);
    rows_first = vt.bounds[0];
    rows = vt.bounds[2 * (new_height - 1)] + vt.bounds[2 * (new_height - 1) + 1] - rows_first;
    for (int i = 0; i < new_height; ++i) vt.bounds[2 * i] -= rows_first;
  }
  std::vector<std::uint8_t> temp;
  if (need_h) {
    temp.resize(static_cast<std::size_t>(rows) * new_width * 3);
    horizontal(src + static_cast<std::size_t>(rows_first) * stride, stride, rows, new_width,
               precompute(image.width, new_width), temp.data());
    src = temp.data();
    stride = static_cast<std::size_t>(new_width) * 3;
    rows_first = 0;
  }
  std::vector<std::uint8_t> out(static_cast<std::size_t>(new_height) * new_width * 3);
  if (need_v) {
    vertical(src + static_cast<std::size_t>(rows_first) * stride, stride, new_width, new_height, vt, out.data());
  } else {
    for (int y = 0; y < new_height; ++y) {
      std::memcpy(&out[static_cast<std::size_t>(y) * new_width * 3], src + static_cast<std::size_t>(y) * stride,
                  static_cast<std::size_t>(new_width) * 3);
    }
  }
  return out;
}

Letterbox preprocess_into(const ImageView& image, const PreprocessConfig& cfg, float* out) {
  const int H = cfg.size[0], W = cfg.size[1];
  const Letterbox lb = letterbox(image.height, image.width, cfg.size);
  const std::uint8_t* pixels = image.data;
  std::size_t stride = image.row_stride;
  std::vector<std::uint8_t> resized;
  if (lb.resized_height != image.height || lb.resized_width != image.width) {
    resized = resize_bilinear(image, lb.resized_height, lb.resized_width);
    pixels = resized.data();
    stride = static_cast<std::size_t>(lb.resized_width) * 3;
  }
  // float32 as numpy computes it: (v - mean * 255) * (1 / (std * 255)).
  float mean[3], inv_std[3];
  for (int c = 0; c < 3; ++c) {
    mean[c] = cfg.mean[c] * 255.0f;
    inv_std[c] = 1.0f / (cfg.std[c] * 255.0f);
  }
  const bool bgr = image.order == ChannelOrder::kBGR;
  const std::size_t plane = static_cast<std::size_t>(H) * W;
  std::fill(out, out + 3 * plane, 0.0f);
  for (int y = 0; y < lb.resized_height; ++y) {
    const std::uint8_t* row = pixels + static_cast<std::size_t>(y) * stride;
    for (int c = 0; c < 3; ++c) {
      const int src_c = bgr ? 2 - c : c;
      float* dst = out + c * plane + static_cast<std::size_t>(y) * W;
      for (int x = 0; x < lb.resized_width; ++x) dst[x] = (static_cast<float>(row[3 * x + src_c]) - mean[c]) * inv_std[c];
    }
  }
  return lb;
}

}  // namespace retina
