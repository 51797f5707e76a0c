// Image files for the command-line tools: JPEG, PNG or BMP decoded with stb, turned upright as the file's
// EXIF orientation says (as image viewers and the Python runtime's load_image do). The library itself
// (retina::ImageView) takes pixels as the caller gives them: callers pass upright pixels.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace retina_tools {

struct DecodedImage {
  std::vector<unsigned char> rgb;  // uint8 [height][width][3], RGB, upright
  int width = 0, height = 0;
  int orientation = 1;  // the file's EXIF orientation (1: none or unreadable)
};

// EXIF Orientation (1-8) of an encoded JPEG (first APP1 "Exif" segment) or PNG (eXIf chunk); 1 when the
// file has none, the tag is out of range or the EXIF block is malformed (viewers then show stored pixels).
int exif_orientation(const unsigned char* data, std::size_t size);

// `rgb` (uint8 [height][width][3], stored pixels) turned upright for `orientation`; width and height are
// updated (swapped for orientations 5-8).
std::vector<unsigned char> orient_rgb(const std::vector<unsigned char>& rgb, int& width, int& height, int orientation);

// Decode `path` (JPEG, PNG or BMP, checked from the magic bytes; the pixel count checked from the header
// against `max_pixels` before decoding) and turn it upright. Throws retina::Error (kImage) naming the file.
DecodedImage decode_image_file(const std::string& path, std::int64_t max_pixels);

}  // namespace retina_tools
