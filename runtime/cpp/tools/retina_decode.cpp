// retina_decode IMAGE OUT.raw: decode IMAGE as retina_infer does (stb, EXIF orientation applied) and write
// its pixels, uint8 [height][width][3] RGB, to OUT.raw; prints "WIDTH HEIGHT ORIENTATION". For the tests.
#include <cstdio>
#include <fstream>

#include "image_file.hpp"
#include "retina/detector.hpp"

int main(int argc, char** argv) {
  if (argc != 3) {
    std::fprintf(stderr, "usage: retina_decode IMAGE OUT.raw\n");
    return 2;
  }
  try {
    const retina_tools::DecodedImage d = retina_tools::decode_image_file(argv[1], retina::Options{}.max_pixels);
    std::ofstream out(argv[2], std::ios::binary);
    out.write(reinterpret_cast<const char*>(d.rgb.data()), static_cast<std::streamsize>(d.rgb.size()));
    if (!out) throw retina::Error(retina::ErrorCode::kImage, std::string(argv[2]) + ": cannot write");
    std::printf("%d %d %d\n", d.width, d.height, d.orientation);
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "retina_decode: %s\n", e.what());
    return 1;
  }
}
