# retina_check_tensorrt_versions(INCLUDE_DIR LIBRARY): a configure error when regular TensorRT's headers
# (NvInferVersion.h) and library (libnvinfer.so.MAJOR.MINOR.PATCH, after symlinks) are different releases,
# e.g. headers from /usr/include and the library from a tarball: the virtual-table layout may differ.
# A library file without a version in its name cannot be compared and is accepted.
function(retina_check_tensorrt_versions include_dir library)
  file(STRINGS "${include_dir}/NvInferVersion.h" lines REGEX "^#define (NV_TENSORRT|TRT)_(MAJOR|MINOR)[A-Z_]* +[0-9]+")
  set(major "")
  set(minor "")
  foreach(line IN LISTS lines)
    if(line MATCHES "_MAJOR[A-Z_]* +([0-9]+)" AND major STREQUAL "")
      set(major "${CMAKE_MATCH_1}")
    elseif(line MATCHES "_MINOR[A-Z_]* +([0-9]+)" AND minor STREQUAL "")
      set(minor "${CMAKE_MATCH_1}")
    endif()
  endforeach()
  get_filename_component(real "${library}" REALPATH)
  get_filename_component(name "${real}" NAME)
  if(major STREQUAL "" OR NOT name MATCHES "\\.so\\.([0-9]+)\\.([0-9]+)")
    return()
  endif()
  if(NOT "${CMAKE_MATCH_1}.${CMAKE_MATCH_2}" STREQUAL "${major}.${minor}")
    message(FATAL_ERROR "retina_runtime: TensorRT headers in ${include_dir} are ${major}.${minor} but ${library} "
                        "is ${CMAKE_MATCH_1}.${CMAKE_MATCH_2}: point TensorRT_ROOT at one install")
  endif()
endfunction()
