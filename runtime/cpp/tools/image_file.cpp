#include "image_file.hpp"

#include <stb_image.h>

#include <algorithm>
#include <cstring>
#include <fstream>
#include <iterator>
#include <memory>

#include "retina/detector.hpp"

namespace retina_tools {
namespace {

constexpr std::uint16_t kOrientationTag = 0x0112;

// Orientation from a TIFF structure (EXIF's payload): byte order, magic 42, IFD0's entries.
int tiff_orientation(const unsigned char* t, std::size_t size) {
  if (size < 8) return 1;
  const bool little = t[0] == 'I' && t[1] == 'I';
  if (!little && !(t[0] == 'M' && t[1] == 'M')) return 1;
  auto u16 = [&](std::size_t at) -> std::uint32_t {
    return little ? t[at] | (t[at + 1] << 8) : (t[at] << 8) | t[at + 1];
  };
  auto u32 = [&](std::size_t at) -> std::uint32_t {
    return little ? u16(at) | (u16(at + 2) << 16) : (u16(at) << 16) | u16(at + 2);
  };
  if (u16(2) != 42) return 1;
  const std::size_t ifd = u32(4);
  if (ifd > size - 2) return 1;
  const std::size_t count = u16(ifd);
  for (std::size_t i = 0; i < count; ++i) {
    const std::size_t entry = ifd + 2 + 12 * i;
    if (entry + 12 > size) return 1;
    if (u16(entry) != kOrientationTag) continue;
    const std::uint32_t type = u16(entry + 2);
    std::uint32_t value = 0;
    if (type == 3) value = u16(entry + 8);        // SHORT, as EXIF specifies
    else if (type == 4) value = u32(entry + 8);   // LONG, written by some tools
    return value >= 1 && value <= 8 ? static_cast<int>(value) : 1;
  }
  return 1;
}

int jpeg_orientation(const unsigned char* d, std::size_t size) {
  std::size_t pos = 2;  // after SOI
  while (pos + 4 <= size) {
    if (d[pos] != 0xFF) return 1;
    const unsigned char marker = d[pos + 1];
    if (marker == 0xFF) {  // fill byte
      ++pos;
      continue;
    }
    if (marker == 0xD9 || marker == 0xDA) return 1;  // EOI, SOS: no metadata after this
    if (marker == 0x01 || (marker >= 0xD0 && marker <= 0xD7)) {  // no length field
      pos += 2;
      continue;
    }
    const std::size_t length = (d[pos + 2] << 8) | d[pos + 3];  // includes its own 2 bytes
    if (length < 2 || pos + 2 + length > size) return 1;
    const unsigned char* body = d + pos + 4;
    if (marker == 0xE1 && length - 2 >= 6 && std::memcmp(body, "Exif\0\0", 6) == 0) {
      return tiff_orientation(body + 6, length - 2 - 6);  // the first Exif segment decides
    }
    pos += 2 + length;
  }
  return 1;
}

int png_orientation(const unsigned char* d, std::size_t size) {
  std::size_t pos = 8;  // after the signature
  while (pos + 12 <= size) {
    const std::size_t length = (std::size_t{d[pos]} << 24) | (d[pos + 1] << 16) | (d[pos + 2] << 8) | d[pos + 3];
    if (length > size - pos - 12) return 1;
    const unsigned char* type = d + pos + 4;
    const unsigned char* body = d + pos + 8;
    if (std::memcmp(type, "eXIf", 4) == 0) {
      const bool prefixed = length >= 6 && std::memcmp(body, "Exif\0\0", 6) == 0;
      return prefixed ? tiff_orientation(body + 6, length - 6) : tiff_orientation(body, length);
    }
    if (std::memcmp(type, "IEND", 4) == 0) return 1;
    pos += 12 + length;
  }
  return 1;
}

}  // namespace

int exif_orientation(const unsigned char* data, std::size_t size) {
  if (size > 3 && data[0] == 0xFF && data[1] == 0xD8) return jpeg_orientation(data, size);
  if (size > 8 && std::memcmp(data, "\x89PNG\r\n\x1a\n", 8) == 0) return png_orientation(data, size);
  return 1;  // BMP carries no EXIF
}

std::vector<unsigned char> orient_rgb(const std::vector<unsigned char>& rgb, int& width, int& height, int orientation) {
  if (orientation < 2 || orientation > 8) return rgb;
  const int w = width, h = height;
  const bool swap = orientation >= 5;
  const int out_w = swap ? h : w, out_h = swap ? w : h;
  std::vector<unsigned char> out(rgb.size());
  for (int y = 0; y < out_h; ++y) {
    for (int x = 0; x < out_w; ++x) {
      int sx = x, sy = y;  // the stored pixel (column, row) shown at (x, y)
      switch (orientation) {
        case 2: sx = w - 1 - x; break;                       // mirrored left-right
        case 3: sx = w - 1 - x; sy = h - 1 - y; break;       // turned 180 degrees
        case 4: sy = h - 1 - y; break;                       // mirrored top-bottom
        case 5: sx = y; sy = x; break;                       // mirrored along the main diagonal
        case 6: sx = y; sy = h - 1 - x; break;               // shown turned 90 degrees clockwise
        case 7: sx = w - 1 - y; sy = h - 1 - x; break;       // mirrored along the other diagonal
        case 8: sx = w - 1 - y; sy = x; break;               // shown turned 90 degrees counter-clockwise
      }
      const unsigned char* src = &rgb[(static_cast<std::size_t>(sy) * w + sx) * 3];
      std::copy(src, src + 3, &out[(static_cast<std::size_t>(y) * out_w + x) * 3]);
    }
  }
  width = out_w;
  height = out_h;
  return out;
}

DecodedImage decode_image_file(const std::string& path, std::int64_t max_pixels) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw retina::Error(retina::ErrorCode::kImage, path + ": cannot open");
  std::vector<unsigned char> bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  const bool jpeg = bytes.size() > 3 && bytes[0] == 0xFF && bytes[1] == 0xD8 && bytes[2] == 0xFF;
  const bool png = bytes.size() > 8 && std::memcmp(bytes.data(), "\x89PNG\r\n\x1a\n", 8) == 0;
  const bool bmp = bytes.size() > 2 && bytes[0] == 'B' && bytes[1] == 'M';
  if (!jpeg && !png && !bmp) throw retina::Error(retina::ErrorCode::kImage, path + ": not a JPEG, PNG or BMP file");
  const int size = static_cast<int>(std::min<std::size_t>(bytes.size(), 1u << 30));
  DecodedImage d;
  int channels = 0;
  if (!stbi_info_from_memory(bytes.data(), size, &d.width, &d.height, &channels)) {
    throw retina::Error(retina::ErrorCode::kImage, path + ": " + stbi_failure_reason());
  }
  if (static_cast<std::int64_t>(d.width) * d.height > max_pixels) {
    throw retina::Error(retina::ErrorCode::kImage, path + ": " + std::to_string(d.width) + "x" +
                                                       std::to_string(d.height) + " exceeds the pixel limit");
  }
  std::unique_ptr<unsigned char, void (*)(void*)> pixels(
      stbi_load_from_memory(bytes.data(), size, &d.width, &d.height, &channels, 3), stbi_image_free);
  if (!pixels) throw retina::Error(retina::ErrorCode::kImage, path + ": " + stbi_failure_reason());
  const std::size_t bytes_out = static_cast<std::size_t>(d.width) * d.height * 3;
  const std::vector<unsigned char> stored(pixels.get(), pixels.get() + bytes_out);
  d.orientation = exif_orientation(bytes.data(), bytes.size());
  d.rgb = orient_rgb(stored, d.width, d.height, d.orientation);
  return d;
}

}  // namespace retina_tools
