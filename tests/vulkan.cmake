# vulkan.cmake: the Vulkan backend's tests, included from tests/CMakeLists.txt
# when MHA_VULKAN is ON. test_vulkan is its Criterion suite (device found and
# described, several devices and contexts, buffers, forwards against the CPU,
# pipeline cache cold/warm/corrupt, validation messenger, no driver);
# test_vulkan_validation reruns it under the Khronos validation layer with
# synchronization validation, test_vulkan_limits with mobile-class caps,
# test_vulkan_staging with every transfer through a staging buffer (as on a
# discrete GPU) under validation. test_vulkan_interop and the
# vulkan_engine example cover engine interop (include/mha_vulkan.h), below.
# MHA_REQUIRE_VULKAN=1 in the environment turns "no device" into a failure.
add_executable(test_vulkan ${CMAKE_CURRENT_LIST_DIR}/test_vulkan.c)
target_link_libraries(test_vulkan PRIVATE mha_internal PkgConfig::CRITERION m)
target_include_directories(test_vulkan PRIVATE
  ${PROJECT_SOURCE_DIR}/include ${PROJECT_SOURCE_DIR}/core
  ${PROJECT_SOURCE_DIR}/backends/vulkan)
target_compile_definitions(test_vulkan PRIVATE VK_NO_PROTOTYPES
                           _DEFAULT_SOURCE)

set(MHA_VULKAN_TEST_TMP ${CMAKE_CURRENT_BINARY_DIR}/vulkan-tmp)
file(MAKE_DIRECTORY ${MHA_VULKAN_TEST_TMP})
set(MHA_VULKAN_TEST_ENV ${MHA_TEST_ENV}
    "MHA_TEST_TMPDIR=${MHA_VULKAN_TEST_TMP}")

add_test(NAME test_vulkan COMMAND test_vulkan --jobs 2)
set_tests_properties(test_vulkan PROPERTIES
  ENVIRONMENT "${MHA_VULKAN_TEST_ENV}" TIMEOUT 600)

add_test(NAME test_vulkan_validation COMMAND test_vulkan --jobs 2)
set_tests_properties(test_vulkan_validation PROPERTIES
  ENVIRONMENT "${MHA_VULKAN_TEST_ENV};MHA_VULKAN_VALIDATION=1" TIMEOUT 600)

add_test(NAME test_vulkan_staging COMMAND test_vulkan --jobs 2)
set_tests_properties(test_vulkan_staging PROPERTIES
  ENVIRONMENT
  "${MHA_VULKAN_TEST_ENV};MHA_VULKAN_VALIDATION=1;MHA_VULKAN_LIMITS=mapped=0"
  TIMEOUT 600)

add_test(NAME test_vulkan_limits COMMAND test_vulkan --jobs 2)
set_tests_properties(test_vulkan_limits PROPERTIES
  ENVIRONMENT
  "${MHA_VULKAN_TEST_ENV};MHA_VULKAN_LIMITS=shared=16384,workgroup=128,fp16=0"
  TIMEOUT 600)

find_program(MHA_VALGRIND valgrind)
set(MHA_VULKAN_SUPP ${PROJECT_SOURCE_DIR}/backends/vulkan/valgrind.supp)
# mha_vulkan_valgrind_test(<name> <target> <filter>): the target's tests
# matching filter under memcheck; Criterion re-executes itself per test, so
# children are followed.
function(mha_vulkan_valgrind_test name target filter)
  if(NOT MHA_VALGRIND)
    return()
  endif()
  add_test(NAME ${name}
           COMMAND ${MHA_VALGRIND} --trace-children=yes --error-exitcode=99
                   --leak-check=full --errors-for-leak-kinds=definite
                   --suppressions=${MHA_VULKAN_SUPP}
                   $<TARGET_FILE:${target}> --jobs=1 --filter=${filter})
  # Under valgrind lavapipe compiles every shader again (the entries the
  # native suites left in Mesa's disk cache do not match there: the
  # steady-state test took 173 s with an empty cache, 162 s with the native
  # suites' one, 44 s with one a valgrind run filled), so these start first
  # (COST) rather than last; the validation layers, which the native suites
  # run, are left out (15 of the 31 s of a warm forward test).
  set(env ${MHA_VULKAN_TEST_ENV})
  list(FILTER env EXCLUDE REGEX "^MHA_VULKAN_VALIDATION=")
  set_tests_properties(${name} PROPERTIES
      ENVIRONMENT "${env};MHA_VULKAN_VALIDATION=0"
      COST 1000
      TIMEOUT 900
      LABELS "valgrind;slow")
endfunction()

# The host code of both paths (fused and not).
mha_vulkan_valgrind_test(test_vulkan_valgrind test_vulkan
                         "vulkan/forward_@(fused|unfused)_matches_cpu")

# test_vulkan_interop: libmha inside an engine's Vulkan device
# (include/mha_vulkan.h), through the engine of examples/vulkan_engine.c
# that it compiles in, under the validation layer and synchronization
# validation of the engine's own instance. Linked as an engine is: libmha
# statically (mha_static), libvulkan directly. The example itself runs as
# vulkan_engine_example (77: no device, skipped).
find_library(MHA_LIBVULKAN NAMES vulkan vulkan-1 REQUIRED)
mha_glslc(${PROJECT_SOURCE_DIR}/examples/shaders/affine.comp affine.spv)
add_executable(test_vulkan_interop
               ${CMAKE_CURRENT_LIST_DIR}/test_vulkan_interop.c
               ${CMAKE_CURRENT_BINARY_DIR}/affine.spv)
target_include_directories(test_vulkan_interop PRIVATE
  ${PROJECT_SOURCE_DIR}/examples ${MHA_VULKAN_HEADERS})
target_compile_definitions(test_vulkan_interop PRIVATE _DEFAULT_SOURCE
  MHA_ENGINE_SHADER="${CMAKE_CURRENT_BINARY_DIR}/affine.spv")
target_link_libraries(test_vulkan_interop PRIVATE mha_static
                      ${MHA_LIBVULKAN} PkgConfig::CRITERION m)
add_test(NAME test_vulkan_interop COMMAND test_vulkan_interop --jobs 2)
set_tests_properties(test_vulkan_interop PROPERTIES
  ENVIRONMENT "${MHA_VULKAN_TEST_ENV}" TIMEOUT 600)
# The host side of recording (wrapped buffers, set cache, eviction).
mha_vulkan_valgrind_test(test_vulkan_interop_valgrind test_vulkan_interop
                         vulkan_interop/steady*)
# test_vulkan_decoder_record: decoder steps recorded into the same
# engine's command buffer (mha_vulkan_decoder_record), under validation.
add_executable(test_vulkan_decoder_record
               ${CMAKE_CURRENT_LIST_DIR}/test_vulkan_decoder_record.c
               ${CMAKE_CURRENT_BINARY_DIR}/affine.spv)
target_include_directories(test_vulkan_decoder_record PRIVATE
  ${PROJECT_SOURCE_DIR}/examples ${MHA_VULKAN_HEADERS})
target_compile_definitions(test_vulkan_decoder_record PRIVATE
  _DEFAULT_SOURCE MHA_ENGINE_SHADER="${CMAKE_CURRENT_BINARY_DIR}/affine.spv")
# the engine's scene (nn.MHA layers) is compiled in but not used here
target_compile_options(test_vulkan_decoder_record PRIVATE
                       -Wno-unused-function)
target_link_libraries(test_vulkan_decoder_record PRIVATE mha_static
                      ${MHA_LIBVULKAN} PkgConfig::CRITERION m)
add_test(NAME test_vulkan_decoder_record
         COMMAND test_vulkan_decoder_record --jobs 2)
set_tests_properties(test_vulkan_decoder_record PROPERTIES
  ENVIRONMENT "${MHA_VULKAN_TEST_ENV}" TIMEOUT 600)
if(TARGET example-vulkan-engine)
  add_test(NAME vulkan_engine_example COMMAND example-vulkan-engine)
  set_tests_properties(vulkan_engine_example PROPERTIES
    ENVIRONMENT "${MHA_VULKAN_TEST_ENV}" SKIP_RETURN_CODE 77 TIMEOUT 300)
endif()
