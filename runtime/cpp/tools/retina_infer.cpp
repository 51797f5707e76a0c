// retina_infer ENGINE IMAGE... [--json] [--iterations N] [--device D] [--cuda-graphs]
// Detections of each image (JSON with --json); with --iterations, latency of detect() over all images.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "image_file.hpp"
#include "retina/detector.hpp"

namespace {

double percentile(std::vector<double> v, double q) {
  std::sort(v.begin(), v.end());
  const double pos = q * static_cast<double>(v.size() - 1);
  const std::size_t lo = static_cast<std::size_t>(pos);
  const std::size_t hi = std::min(lo + 1, v.size() - 1);
  return v[lo] + (v[hi] - v[lo]) * (pos - static_cast<double>(lo));
}

int usage(std::FILE* to = stderr) {
  std::fprintf(to,
               "usage: retina_infer ENGINE IMAGE... [--json] [--iterations N] [--warmup W] [--device D] "
               "[--cuda-graphs]\n");
  return 2;
}

struct Args {
  std::string engine;
  std::vector<std::string> images;
  bool json = false;
  int iterations = 0, warmup = 3;
  retina::Options options;
};

// Returns 0 when `args` is complete, else the exit status (2: usage error, -1: --help printed).
int parse_args(int argc, char** argv, Args& args) {
  std::vector<std::string> positional;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--json") {
      args.json = true;
    } else if (a == "--cuda-graphs") {
      args.options.cuda_graphs = true;
    } else if (a == "--iterations" || a == "--warmup" || a == "--device") {
      int& target = a == "--iterations" ? args.iterations : a == "--warmup" ? args.warmup : args.options.device;
      char* end = nullptr;
      const long v = i + 1 < argc ? std::strtol(argv[++i], &end, 10) : -1;
      if (end == nullptr || *end != '\0' || v < 0 || v > 1000000) return usage();
      target = static_cast<int>(v);
    } else if (a == "-h" || a == "--help") {
      usage(stdout);
      return -1;
    } else if (a.rfind("--", 0) == 0) {
      return usage();
    } else {
      positional.push_back(a);
    }
  }
  if (positional.size() < 2) return usage();
  args.engine = positional[0];
  args.images.assign(positional.begin() + 1, positional.end());
  return 0;
}

// Latency of detect() over all images: min / median / p90 / p99 in ms, and images per second at the median.
nlohmann::json time_detect(retina::Detector& detector, const std::vector<retina::ImageView>& views, const Args& args) {
  for (int i = 0; i < args.warmup; ++i) detector.detect(views);
  std::vector<double> ms;
  for (int i = 0; i < args.iterations; ++i) {
    const auto t0 = std::chrono::steady_clock::now();
    detector.detect(views);
    ms.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
  }
  const double median = percentile(ms, 0.5);
  return {{"min", *std::min_element(ms.begin(), ms.end())}, {"median", median}, {"p90", percentile(ms, 0.9)},
          {"p99", percentile(ms, 0.99)}, {"iterations", args.iterations}, {"images_per_call", views.size()},
          {"images_per_s", 1000.0 * static_cast<double>(views.size()) / median}};
}

void print_text(const nlohmann::json& out) {
  for (const auto& image : out["images"]) {
    std::printf("%s: %zu detections\n", image["image"].get<std::string>().c_str(), image["detections"].size());
    for (const auto& d : image["detections"]) std::printf("  %s\n", d.dump().c_str());
  }
  if (out.contains("latency_ms")) {
    const auto& l = out["latency_ms"];
    std::printf("latency ms over %d calls of %zu images: min %.3f median %.3f p90 %.3f p99 %.3f; %.1f images/s\n",
                l["iterations"].get<int>(), l["images_per_call"].get<std::size_t>(), l["min"].get<double>(),
                l["median"].get<double>(), l["p90"].get<double>(), l["p99"].get<double>(),
                l["images_per_s"].get<double>());
  }
}

}  // namespace

int main(int argc, char** argv) {
  Args args;
  if (const int status = parse_args(argc, argv, args); status != 0) return status < 0 ? 0 : status;
  try {
    // Images first (upright as their EXIF orientation says): a bad path fails before an engine is deserialized.
    std::vector<retina_tools::DecodedImage> decoded;
    for (const std::string& path : args.images) {
      decoded.push_back(retina_tools::decode_image_file(path, args.options.max_pixels));
    }
    std::unique_ptr<retina::Detector> detector = retina::Detector::load(args.engine, args.options);
    std::vector<retina::ImageView> views;
    for (const retina_tools::DecodedImage& d : decoded) {
      views.push_back({d.rgb.data(), d.width, d.height, static_cast<std::size_t>(d.width) * 3, retina::ChannelOrder::kRGB});
    }
    const std::vector<retina::Detections> results = detector->detect(views);
    nlohmann::json out = {{"engine", args.engine}, {"backend", detector->describe()}, {"images", nlohmann::json::array()}};
    for (std::size_t i = 0; i < results.size(); ++i) {
      nlohmann::json dets = nlohmann::json::array();
      for (const retina::Detection& d : results[i].items) {
        dets.push_back({{"box", d.box}, {"score", d.score}, {"class_id", d.class_id}, {"class_name", d.class_name}});
      }
      out["images"].push_back({{"image", args.images[i]}, {"detections", dets}});
    }
    if (args.iterations > 0) out["latency_ms"] = time_detect(*detector, views, args);
    if (args.json) {
      std::printf("%s\n", out.dump(2).c_str());
    } else {
      print_text(out);
    }
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "retina_infer: %s\n", e.what());
    return 1;
  }
}
