# vulkan.cmake: the Vulkan backend's tests, included from tests/CMakeLists.txt
# when MHA_VULKAN is ON. test_vulkan is its Criterion suite (device found and
# described, several devices and contexts, buffers, forwards against the CPU,
# pipeline cache cold/warm/corrupt, validation messenger, no driver);
# test_vulkan_validation reruns it under the Khronos validation layer with
# synchronization validation, test_vulkan_limits with mobile-class caps,
# test_vulkan_staging with every transfer through a staging buffer (as on a
# discrete GPU) under validation.
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
if(MHA_VALGRIND)
  # The host code of both paths (fused and not) under memcheck; Criterion
  # re-executes itself per test, so children are followed.
  add_test(NAME test_vulkan_valgrind
           COMMAND ${MHA_VALGRIND} --trace-children=yes --error-exitcode=99
                   --leak-check=full --errors-for-leak-kinds=definite
                   --suppressions=${MHA_VULKAN_SUPP}
                   $<TARGET_FILE:test_vulkan> --jobs=1
                   --filter=vulkan/forward_*)
  set_tests_properties(test_vulkan_valgrind PROPERTIES
      ENVIRONMENT "${MHA_VULKAN_TEST_ENV}"
      TIMEOUT 900
      LABELS "valgrind;slow")
endif()
