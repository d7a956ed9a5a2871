# vulkan.cmake: builds examples/vulkan_engine.c, the headless engine loop that
# runs libmha inside its own Vulkan device (include/mha_vulkan.h). It links
# libvulkan directly, as an engine does, and libmha statically (mha_static,
# whose volk copies of vk* are local), which shows the two do not clash. Its
# own compute shader, examples/shaders/affine.comp, goes through glslc
# (mha_glslc of backends/vulkan) into the build tree. Without a libvulkan to
# link, the example is left out.
find_library(MHA_LIBVULKAN NAMES vulkan vulkan-1)
if(MHA_LIBVULKAN)
  mha_glslc(${CMAKE_CURRENT_LIST_DIR}/shaders/affine.comp affine.spv)
  add_executable(example-vulkan-engine ${CMAKE_CURRENT_LIST_DIR}/vulkan_engine.c
                 ${CMAKE_CURRENT_BINARY_DIR}/affine.spv)
  target_include_directories(example-vulkan-engine PRIVATE
                             ${MHA_VULKAN_HEADERS})
  target_compile_definitions(example-vulkan-engine PRIVATE
    MHA_ENGINE_SHADER="${CMAKE_CURRENT_BINARY_DIR}/affine.spv")
  target_link_libraries(example-vulkan-engine PRIVATE mha_static
                        ${MHA_LIBVULKAN} m)
endif()
