// Uses the installed headers and library: the manifest parser and the preprocessing, plus the C API.
#include <cstdio>
#include <vector>

#include "retina/preprocess.hpp"
#include "retina/retina.h"

int main() {
  retina::PreprocessConfig cfg;
  cfg.size = {128, 128};
  std::vector<unsigned char> pixels(32 * 64 * 3, 128);
  std::vector<float> chw(3 * 128 * 128);
  const retina::Letterbox lb =
      retina::preprocess_into({pixels.data(), 64, 32, 64 * 3, retina::ChannelOrder::kRGB}, cfg, chw.data());
  retina_detector* detector = nullptr;
  const retina_status status = retina_detector_create("missing.engine", nullptr, &detector);
  std::printf("retina %s: scale %.1f, resized %dx%d; missing engine -> %d (%s)\n", retina_version(), lb.scale,
              lb.resized_width, lb.resized_height, static_cast<int>(status), retina_last_error());
  return lb.scale == 2.0 && status == RETINA_ERR_MODEL_FILE ? 0 : 1;
}
