// The engine-independent core: manifest, preprocessing, host NMS, mapping back, chunking, Detector.
#include <cstdio>
#include <fstream>
#include <memory>

#include "check.hpp"
#include "retina/detector.hpp"
#include "retina/postprocess.hpp"
#include "retina/preprocess.hpp"
#include "test_helpers.hpp"

using namespace retina;
using testing_helpers::manifest_json;

namespace {

std::string replace(std::string s, const std::string& from, const std::string& to) {
  const std::size_t at = s.find(from);
  if (at != std::string::npos) s.replace(at, from.size(), to);
  return s;
}

ModelSpec spec(const std::string& nms = "none") { return parse_manifest(manifest_json(std::string(64, 'b'), nms)).spec; }

}  // namespace

TEST(manifest_fields_parse) {
  const EngineManifest m = parse_manifest(manifest_json(std::string(64, 'b')));
  CHECK(m.flavour == "tensorrt" && m.trt_version == "10.13.0.35" && m.precision == "fp32");
  CHECK(m.spec.class_names.size() == 2 && m.spec.class_names[1] == "dog");
  CHECK(m.spec.preprocess.size[0] == 128 && m.spec.preprocess.size[1] == 256);
  CHECK(m.spec.batch_range[0] == 1 && m.spec.batch_range[2] == 4);
  CHECK(m.spec.nms.mode == "none" && m.spec.nms.topk_per_level == 5 && m.spec.anchors_per_level.size() == 2);
  CHECK(!m.gpu_name.has_value());
  CHECK(release_of(m.trt_version) == "10.13.0" && release_of("1.7.1.116") == "1.7.1");
}

TEST(manifest_missing_or_wrong_typed_field_is_named) {
  const std::string good = manifest_json(std::string(64, 'b'));
  CHECK_THROWS(parse_manifest(replace(good, R"("precision": "fp32",)", ""), "m.json"), ErrorCode::kModelFile,
               "m.json: missing field 'precision'");
  CHECK_THROWS(parse_manifest(replace(good, R"("batch_range": [1, 2, 4])", R"("batch_range": [1, "2", 4])")),
               ErrorCode::kModelFile, "'batch_range' must be an integer, got string");
  CHECK_THROWS(parse_manifest(replace(good, R"("max_dets": 10)", R"("max_dets": 1.5)")), ErrorCode::kModelFile,
               "'nms.max_dets' must be an integer");
  CHECK_THROWS(parse_manifest(replace(good, R"("class_names": ["cat", "dog"])", R"("class_names": "cat")")),
               ErrorCode::kModelFile, "'class_names' must be an array, got string");
  CHECK_THROWS(parse_manifest(replace(good, R"("size": [128, 256])", R"("size": [100, 256])")), ErrorCode::kModelFile,
               "multiples of 128");
  CHECK_THROWS(parse_manifest(replace(good, "engine-manifest", "other")), ErrorCode::kModelFile, "not an engine manifest");
  CHECK_THROWS(parse_manifest(replace(good, R"("std": [0.229, 0.224, 0.225])", R"("std": [0.2, 0, 0.2])")),
               ErrorCode::kModelFile, "std finite and > 0");
  // as in Python, mean / std / channel_order default to ImageNet's statistics and RGB
  const std::string bare = replace(good, R"("mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225], "channel_order": "rgb")",
                                   R"("channel_order": "rgb")");
  CHECK(bare != good && parse_manifest(bare).spec.preprocess.std[2] == 0.225f);
  CHECK_THROWS(parse_manifest("{not json"), ErrorCode::kModelFile, "not valid JSON");
  CHECK_THROWS(parse_manifest(replace(good, R"("extra": {})", R"("extra": {}, "bogus": 1)")), ErrorCode::kModelFile,
               "unknown field 'bogus'");
  CHECK_THROWS(parse_manifest(manifest_json("XYZ")), ErrorCode::kModelFile, "64 lowercase hex digits");
}

TEST(engine_sha256_checked_before_use) {
  CHECK(sha256_hex("abc", 3) == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  const std::string path = "core_test.engine";
  { std::ofstream(path, std::ios::binary) << "engine bytes"; }
  const std::string sha = sha256_hex("engine bytes", 12);
  CHECK(read_verified_engine(path, parse_manifest(manifest_json(sha))).size() == 12);
  { std::ofstream(path, std::ios::binary) << "engine bytes, tampered"; }
  CHECK_THROWS(read_verified_engine(path, parse_manifest(manifest_json(sha))), ErrorCode::kModelFile,
               "differs from its manifest's");
  CHECK_THROWS(read_verified_engine("no-such.engine", parse_manifest(manifest_json(sha))), ErrorCode::kModelFile,
               "no such engine file");
  CHECK_THROWS(read_manifest("no-such.engine"), ErrorCode::kModelFile, "no manifest no-such.engine.json");
  std::remove(path.c_str());
}

TEST(letterbox_geometry) {
  // h=100, w=200 into 256x256: scale = min(2.56, 1.28) = 1.28 -> 128 x 256
  Letterbox lb = letterbox(100, 200, {256, 256});
  CHECK_NEAR(lb.scale, 1.28, 1e-12);
  CHECK(lb.resized_height == 128 && lb.resized_width == 256);
  // 1x1 into 128x256: scale 128 -> 128 x 128
  lb = letterbox(1, 1, {128, 256});
  CHECK(lb.resized_height == 128 && lb.resized_width == 128);
  // 1000 x 3: scale 0.128 -> width round(0.384) = 0, kept at 1
  lb = letterbox(1000, 3, {128, 256});
  CHECK(lb.resized_height == 128 && lb.resized_width == 1);
  // round half to even as Python: 5 * 0.5 = 2.5 -> 2; 7 * 0.5 = 3.5 -> 4
  lb = letterbox(256, 5, {128, 128});
  CHECK(lb.resized_width == 2);
  lb = letterbox(256, 7, {128, 128});
  CHECK(lb.resized_width == 4);
}

TEST(resize_matches_hand_computed_pillow_values) {
  // 2 -> 4 pixels (upscale, support 1): output centres 0.25, 0.75, 1.25, 1.75 in input pixels; taps at 0.5, 1.5.
  // x=0: only input 0 in range with weight 0.75 then renormalised -> 100; x=1: 0.75*100+0.25*200 = 125;
  // x=2: 175; x=3: 200.
  const std::uint8_t row[6] = {100, 100, 100, 200, 200, 200};
  const ImageView image{row, 2, 1, 6, ChannelOrder::kRGB};
  const std::vector<std::uint8_t> out = resize_bilinear(image, 1, 4);
  CHECK(out.size() == 12);
  CHECK(out[0] == 100 && out[3] == 125 && out[6] == 175 && out[9] == 200);
  // 4 -> 2 (downscale by 2, support 2: antialiased): output 0 centre 1.0, taps 0..2 weights 0.75, 0.75, 0.25
  // (normalised /1.75) -> (10*.75 + 20*.75 + 30*.25) / 1.75 = 17.14 -> 17
  const std::uint8_t wide[12] = {10, 10, 10, 20, 20, 20, 30, 30, 30, 40, 40, 40};
  const std::vector<std::uint8_t> half = resize_bilinear({wide, 4, 1, 12, ChannelOrder::kRGB}, 1, 2);
  CHECK(half[0] == 17);
}

TEST(preprocess_normalises_pads_and_honours_stride_and_bgr) {
  // 2x2 image with row stride 8 (2 bytes of padding per row), no resize into 128x128.
  std::uint8_t pixels[16] = {255, 0, 128, 0, 0, 0, 9, 9, 0, 0, 0, 0, 0, 0, 9, 9};
  PreprocessConfig cfg;
  cfg.size = {128, 128};
  std::vector<float> rgb(3 * 128 * 128), bgr(3 * 128 * 128);
  const ImageView image{pixels, 2, 2, 8, ChannelOrder::kRGB};
  CHECK(preprocess_into(image, cfg, rgb.data()).scale == 64.0);  // 2x2 -> 128x128
  // a 128x128 image is not resized: check the exact normalisation of one pixel
  std::vector<std::uint8_t> big(128 * 128 * 3, 0);
  big[0] = 255, big[1] = 0, big[2] = 128;
  preprocess_into({big.data(), 128, 128, 128 * 3, ChannelOrder::kRGB}, cfg, rgb.data());
  CHECK_NEAR(rgb[0], (1.0 - 0.485) / 0.229, 1e-5);
  CHECK_NEAR(rgb[128 * 128], (0.0 - 0.456) / 0.224, 1e-5);
  CHECK_NEAR(rgb[2 * 128 * 128], (128 / 255.0 - 0.406) / 0.225, 1e-5);
  std::swap(big[0], big[2]);
  preprocess_into({big.data(), 128, 128, 128 * 3, ChannelOrder::kBGR}, cfg, bgr.data());
  CHECK(rgb == bgr);
  // 64 x 128 content in 128 x 128: rows 64.. are padding, exactly 0
  std::vector<std::uint8_t> wide(32 * 64 * 3, 200);
  preprocess_into({wide.data(), 64, 32, 64 * 3, ChannelOrder::kRGB}, cfg, rgb.data());
  CHECK(rgb[63 * 128 + 5] != 0.0f && rgb[64 * 128 + 5] == 0.0f && rgb[2 * 128 * 128 + 127 * 128 + 127] == 0.0f);
}

TEST(bad_images_refused) {
  std::uint8_t px[3] = {1, 2, 3};
  CHECK_THROWS(check_image({nullptr, 1, 1, 3, ChannelOrder::kRGB}, 100, "img"), ErrorCode::kImage, "img: image data is null");
  CHECK_THROWS(check_image({px, 0, 1, 3, ChannelOrder::kRGB}, 100, "img"), ErrorCode::kImage, "0x1 pixels is empty");
  CHECK_THROWS(check_image({px, 2, 1, 3, ChannelOrder::kRGB}, 100, "img"), ErrorCode::kImage, "row stride 3 bytes");
  CHECK_THROWS(check_image({px, 20, 20, 60, ChannelOrder::kRGB}, 100, "img"), ErrorCode::kImage, "exceeds max_pixels=100");
}

TEST(class_aware_nms_hand_cases) {
  // a and b overlap at IoU 81/119 = 0.68 (> 0.5): b is dropped in class 0; c has class 1 and survives a.
  const std::vector<std::array<float, 4>> boxes = {{0, 0, 10, 10}, {1, 1, 11, 11}, {0, 0, 10, 10}, {50, 50, 60, 60}};
  const std::vector<float> scores = {0.9f, 0.8f, 0.7f, 0.95f};
  const std::vector<int> classes = {0, 0, 1, 0};
  const std::vector<std::size_t> keep = batched_nms(boxes, scores, classes, 0.5f, 10);
  CHECK(keep == (std::vector<std::size_t>{3, 0, 2}));
  CHECK(batched_nms(boxes, scores, classes, 0.5f, 2) == (std::vector<std::size_t>{3, 0}));
  // IoU exactly 0.5 does not suppress (strictly greater); degenerate boxes (0/0) never suppress.
  const std::vector<std::array<float, 4>> half = {{0, 0, 10, 10}, {0, 0, 10, 5}, {3, 3, 3, 3}, {3, 3, 3, 3}};
  CHECK(batched_nms(half, {0.9f, 0.8f, 0.7f, 0.6f}, {0, 0, 0, 0}, 0.5f, 10).size() == 4);
  CHECK(batched_nms({}, {}, {}, 0.5f, 10).empty());
  // Equal scores across classes come out by candidate index (the graph's TopK order), not by class:
  // candidate 0 is class 1, candidate 1 class 0, both 0.5; a cut to one keeps candidate 0.
  const std::vector<std::array<float, 4>> apart = {{0, 0, 10, 10}, {50, 50, 60, 60}};
  CHECK(batched_nms(apart, {0.5f, 0.5f}, {1, 0}, 0.5f, 10) == (std::vector<std::size_t>{0, 1}));
  CHECK(batched_nms(apart, {0.5f, 0.5f}, {1, 0}, 0.5f, 1) == (std::vector<std::size_t>{0}));
}

TEST(dense_topk_threshold_and_nms) {
  // 4 anchors in levels of 3 and 1, 2 classes; topk 5 per level, score > 0.3.
  const float boxes[16] = {0, 0, 10, 10, 1, 1, 11, 11, 20, 20, 30, 30, 0, 0, 10, 10};
  const float scores[8] = {0.9f, 0.1f, 0.8f, 0.35f, 0.3f, 0.6f, 0.2f, 0.7f};
  NmsSettings nms;
  nms.mode = "none", nms.max_dets = 10, nms.score_thresh = 0.3f, nms.iou_thresh = 0.5f, nms.topk_per_level = 5;
  const InputDetections d = detections_from_dense(boxes, scores, 4, 2, {3, 1}, nms);
  // candidates: (a0,c0) .9, (a1,c0) .8, (a3,c1) .7, (a2,c1) .6, (a1,c1) .35 (0.3 is not > 0.3); a1 overlaps
  // a0 = a3 at IoU 81/119 = 0.68, so it is suppressed in both classes
  CHECK(d.scores == (std::vector<float>{0.9f, 0.7f, 0.6f}));
  CHECK(d.classes == (std::vector<int>{0, 1, 1}));
  nms.topk_per_level = 1;  // level 0 keeps only (a0, c0), level 1 only (a3, c1)
  CHECK(detections_from_dense(boxes, scores, 4, 2, {3, 1}, nms).scores == (std::vector<float>{0.9f, 0.7f}));
  CHECK_THROWS(detections_from_dense(boxes, scores, 4, 2, {3, 2}, nms), ErrorCode::kModelFile, "sums to 5");
}

TEST(boxes_map_back_and_clip) {
  InputDetections d;
  d.boxes = {{-4, 10, 300, 64}};
  d.scores = {0.5f};
  d.classes = {1};
  const Detections out = to_original(d, 2.0, 30, 100, {"cat", "dog"});
  CHECK(out.size() == 1 && out.items[0].class_name == "dog");
  CHECK(out.items[0].box == (std::array<float, 4>{0.0f, 5.0f, 100.0f, 30.0f}));
  d.classes = {2};
  CHECK_THROWS(to_original(d, 2.0, 30, 100, {"cat", "dog"}), ErrorCode::kBackend, "outside 0..1");
}

TEST(chunking) {
  CHECK(chunk_request(0, 4).empty());
  CHECK(chunk_request(9, 4) == (std::vector<std::pair<int, int>>{{0, 4}, {4, 4}, {8, 1}}));
  CHECK_THROWS(chunk_request(3, 0), ErrorCode::kInvalidArgument, "max_batch");
}

TEST(detector_chunks_pads_and_maps_back) {
  auto backend = std::make_unique<testing_helpers::DenseBackend>();
  backend->boxes_row = {0, 0, 64, 64, 1, 1, 65, 65, 100, 0, 160, 60, 0, 0, 64, 64};
  backend->scores_row = {0.9f, 0.1f, 0.8f, 0.35f, 0.3f, 0.6f, 0.2f, 0.7f};
  testing_helpers::DenseBackend* raw = backend.get();
  ModelSpec s = parse_manifest(manifest_json(std::string(64, 'b'), "none", "[2, 2, 4]")).spec;
  Detector detector(std::move(backend), s);
  std::vector<std::uint8_t> a(64 * 128 * 3, 50), b(300 * 20 * 3, 60);
  std::vector<ImageView> images;
  for (int i = 0; i < 5; ++i) images.push_back({a.data(), 128, 64, 128 * 3, ChannelOrder::kRGB});
  images.push_back({b.data(), 20, 300, 20 * 3, ChannelOrder::kBGR});
  const std::vector<Detections> out = detector.detect(images);
  CHECK(out.size() == 6);
  CHECK(raw->batches == (std::vector<int>{4, 2}));  // 6 images: 4 + 2 (the profile's min is 2)
  CHECK(out[0].size() == 3 && out[0].items[0].class_name == "cat");
  // image 0 was scaled by 2 (64x128 -> 128x256): box (0, 0, 64, 64) -> (0, 0, 32, 32)
  CHECK(out[0].items[0].box == (std::array<float, 4>{0, 0, 32, 32}));
  // image 5 (300 x 20) scaled by 128/300: x clipped to its width 20
  CHECK(out[5].items[0].box[2] == 20.0f && out[5].items[0].box[3] == 64 / (128.0f / 300.0f));
  // a single image runs padded to the profile's min batch of 2
  detector.detect({images[0]});
  CHECK(raw->batches.back() == 2);
  CHECK_THROWS(detector.detect({{nullptr, 1, 1, 3, ChannelOrder::kRGB}}), ErrorCode::kImage, "images[0]");
}

TEST(detector_reads_in_engine_nms_outputs) {
  class NmsBackend : public Backend {
   public:
    std::int32_t num[2] = {2, 0};
    float boxes[2 * 3 * 4] = {2, 2, 4, 4, 6, 6, 8, 8};
    float scores[6] = {0.9f, 0.5f};
    std::int32_t classes[6] = {1, 0};
    Outputs run(const float*, int batch) override {
      return {{"num_dets", {num, DataType::kInt32, {batch, 1}}},
              {"boxes", {boxes, DataType::kFloat32, {batch, 3, 4}}},
              {"scores", {scores, DataType::kFloat32, {batch, 3}}},
              {"classes", {classes, DataType::kInt32, {batch, 3}}}};
    }
    std::string describe() const override { return "nms"; }
  };
  Detector detector(std::make_unique<NmsBackend>(), spec("onnx"));
  std::vector<std::uint8_t> px(128 * 256 * 3, 1);
  const ImageView image{px.data(), 256, 128, 256 * 3, ChannelOrder::kRGB};
  const std::vector<Detections> out = detector.detect({image, image});
  CHECK(out[0].size() == 2 && out[1].empty());
  CHECK(out[0].items[0].class_name == "dog" && out[0].items[1].box == (std::array<float, 4>{6, 6, 8, 8}));
}

CHECK_MAIN
