// Opening an engine's backend: the TensorRT backend where the library was built with it, else an error.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "retina/backend.hpp"
#include "retina/detector.hpp"
#include "retina/manifest.hpp"

namespace retina::detail {

// `engine` holds bytes already checked against the manifest's sha256. Checks flavour, version and GPU
// against the installed library and device, then deserializes. Throws Error(kUnavailable / kModelFile).
std::unique_ptr<Backend> open_engine(const std::vector<char>& engine, const EngineManifest& manifest,
                                     const Options& options, const std::string& engine_path);

bool has_tensorrt();

}  // namespace retina::detail
