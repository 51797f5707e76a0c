// retina_parity JOB.json: runs the C++ core on what a Python test prepared, for tests/runtime/test_cpp_parity.py.
//
// JOB: {"manifest": path (classes, preprocessing, NMS, batch range),
//       "images": [{"path": raw uint8 file, "height": h, "width": w, "stride": bytes per row, "order": "rgb"|"bgr"}],
//       "preprocess_dir": folder for pre_<i>.f32 (float32 [3, H, W] of image i),
//       "replay": [{"input": float32 file of the batch, "outputs": {name: {"path", "dtype", "shape"}}}] (optional:
//                  the backend's recorded calls, replayed in order; each call's input is compared with the recording),
//       "result": path of the JSON written: letterboxes, detections, max |input - recorded input|}
#include <cmath>
#include <deque>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>

#include "retina/detector.hpp"
#include "retina/preprocess.hpp"

using nlohmann::json;

namespace {

template <typename T>
std::vector<T> read_raw(const std::string& path, std::size_t count) {
  std::ifstream in(path, std::ios::binary);
  std::vector<T> data(count);
  if (!in.read(reinterpret_cast<char*>(data.data()), static_cast<std::streamsize>(count * sizeof(T)))) {
    throw std::runtime_error(path + ": short or missing file");
  }
  return data;
}

class ReplayBackend : public retina::Backend {
 public:
  ReplayBackend(json calls, std::size_t per_image) : calls_(std::move(calls)), per_image_(per_image) {}
  double max_input_diff = 0.0;

  retina::Outputs run(const float* input, int batch) override {
    if (next_ >= calls_.size()) throw std::runtime_error("more backend calls than recorded");
    const json& call = calls_[next_++];
    const std::vector<float> recorded = read_raw<float>(call["input"], per_image_ * batch);
    for (std::size_t i = 0; i < recorded.size(); ++i) {
      max_input_diff = std::max(max_input_diff, static_cast<double>(std::fabs(recorded[i] - input[i])));
    }
    retina::Outputs out;
    f32_.clear();
    i32_.clear();
    for (const auto& [name, spec] : call["outputs"].items()) {
      std::vector<std::int64_t> shape = spec["shape"].get<std::vector<std::int64_t>>();
      std::size_t count = 1;
      for (std::int64_t d : shape) count *= static_cast<std::size_t>(d);
      retina::TensorView view;
      view.shape = shape;
      if (spec["dtype"] == "int32") {
        i32_.push_back(read_raw<std::int32_t>(spec["path"], count));
        view = {i32_.back().data(), retina::DataType::kInt32, shape};
      } else {
        f32_.push_back(read_raw<float>(spec["path"], count));
        view = {f32_.back().data(), retina::DataType::kFloat32, shape};
      }
      out[name] = view;
    }
    return out;
  }
  std::string describe() const override { return "replay"; }

 private:
  json calls_;
  std::size_t per_image_;
  std::size_t next_ = 0;
  std::deque<std::vector<float>> f32_;
  std::deque<std::vector<std::int32_t>> i32_;
};

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::cerr << "usage: retina_parity JOB.json\n";
    return 2;
  }
  try {
    std::ifstream job_file(argv[1]);
    const json job = json::parse(job_file);
    std::ifstream manifest_file(job["manifest"].get<std::string>());
    const std::string text((std::istreambuf_iterator<char>(manifest_file)), std::istreambuf_iterator<char>());
    const retina::ModelSpec spec = retina::parse_manifest(text, job["manifest"]).spec;
    const std::size_t per_image = 3 * static_cast<std::size_t>(spec.preprocess.size[0]) * spec.preprocess.size[1];

    std::vector<std::vector<std::uint8_t>> pixels;
    std::vector<retina::ImageView> views;
    for (const json& im : job["images"]) {
      const int h = im["height"], w = im["width"];
      const std::size_t stride = im["stride"];
      pixels.push_back(read_raw<std::uint8_t>(im["path"], stride * static_cast<std::size_t>(h)));
      views.push_back({pixels.back().data(), w, h, stride,
                       im["order"] == "bgr" ? retina::ChannelOrder::kBGR : retina::ChannelOrder::kRGB});
    }
    json result = {{"letterbox", json::array()}};
    std::vector<float> chw(per_image);
    for (std::size_t i = 0; i < views.size(); ++i) {
      const retina::Letterbox lb = retina::preprocess_into(views[i], spec.preprocess, chw.data());
      result["letterbox"].push_back({{"scale", lb.scale}, {"resized", {lb.resized_height, lb.resized_width}}});
      const std::string out = job["preprocess_dir"].get<std::string>() + "/pre_" + std::to_string(i) + ".f32";
      std::ofstream(out, std::ios::binary).write(reinterpret_cast<const char*>(chw.data()),
                                                 static_cast<std::streamsize>(per_image * sizeof(float)));
    }
    if (job.contains("replay")) {
      auto backend = std::make_unique<ReplayBackend>(job["replay"], per_image);
      ReplayBackend* replay = backend.get();
      retina::Detector detector(std::move(backend), spec);
      json images = json::array();
      for (const retina::Detections& dets : detector.detect(views)) {
        json list = json::array();
        for (const retina::Detection& d : dets.items) {
          list.push_back({{"box", d.box}, {"score", d.score}, {"class_id", d.class_id}, {"class_name", d.class_name}});
        }
        images.push_back(list);
      }
      result["detections"] = images;
      result["max_input_diff"] = replay->max_input_diff;
    }
    std::ofstream(job["result"].get<std::string>()) << result.dump();
    return 0;
  } catch (const std::exception& e) {
    std::cerr << "retina_parity: " << e.what() << "\n";
    return 1;
  }
}
