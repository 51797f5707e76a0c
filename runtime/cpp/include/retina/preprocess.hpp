// The shared preprocessing, the same definition as runtime/preprocess.py (see its module docstring):
// aspect-preserving resize with Pillow's BILINEAR filter in 22-bit fixed point (uint8 result),
// normalisation in float32, zero padding at the bottom/right of an H x W canvas, CHW RGB output.
#pragma once

#include <cstdint>
#include <vector>

#include "retina/manifest.hpp"
#include "retina/types.hpp"

namespace retina {

// Where an image lands in the network input.
struct Letterbox {
  double scale = 1.0;  // input pixel = original pixel * scale (min(H / h, W / w), unrounded)
  int resized_height = 0;
  int resized_width = 0;
};

// scale = min(H / h, W / w); resized side = min(side_max, max(1, round_half_even(side * scale))).
Letterbox letterbox(int height, int width, const std::array<int, 2>& size);

// Checks an ImageView (non-null data, width/height >= 1, row_stride >= 3 * width, pixel limit);
// throws Error(kImage) naming `where`.
void check_image(const ImageView& image, std::int64_t max_pixels, const char* where);

// Resizes an RGB or BGR HWC uint8 image (channel order is kept) to new_height x new_width as Pillow's
// Image.resize(..., BILINEAR) does; the result is packed HWC (row stride 3 * new_width).
std::vector<std::uint8_t> resize_bilinear(const ImageView& image, int new_height, int new_width);

// Writes the normalised, padded network input of one image into out[3 * H * W] (CHW, RGB). Returns its letterbox.
Letterbox preprocess_into(const ImageView& image, const PreprocessConfig& cfg, float* out);

}  // namespace retina
