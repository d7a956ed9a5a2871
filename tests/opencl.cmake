# opencl.cmake: the OpenCL backend's tests, included from tests/CMakeLists.txt
# when MHA_OPENCL is ON. test_opencl is its Criterion suite (device found,
# agreement with the CPU backend, binary cache cold/warm/corrupt, build log in
# the error, allocation limit, several contexts, MHA_OPENCL_LIMITS variants);
# test_opencl_interop drives mha_opencl.h from the test's own context and
# queues (it links the ICD loader, as an application does), and
# example_opencl_engine runs examples/opencl_engine.c. The *_valgrind tests
# run the host code under valgrind with PoCL/ICD-loader noise suppressed
# (tests/valgrind-pocl.supp). The generic suites under mobile-GPU caps are
# tests/CMakeLists.txt's *_small_device tests.
# Set MHA_REQUIRE_OPENCL=1 in the environment to turn "no device" into a
# failure. MHA_CACHE_DIR (set by CI) keeps PoCL builds warm between tests.
add_executable(test_opencl ${CMAKE_CURRENT_LIST_DIR}/test_opencl.c)
target_link_libraries(test_opencl PRIVATE mha_internal PkgConfig::CRITERION m)
target_include_directories(test_opencl PRIVATE ${PROJECT_SOURCE_DIR}/include)

set(MHA_OPENCL_TEST_TMP ${CMAKE_CURRENT_BINARY_DIR}/opencl-tmp)
file(MAKE_DIRECTORY ${MHA_OPENCL_TEST_TMP})
add_test(NAME test_opencl COMMAND test_opencl)
set(MHA_OPENCL_TEST_ENV ${MHA_TEST_ENV}
    "MHA_TEST_TMPDIR=${MHA_OPENCL_TEST_TMP}")
set_tests_properties(test_opencl PROPERTIES
    ENVIRONMENT "${MHA_OPENCL_TEST_ENV}"
    TIMEOUT 600)

# The application side of interop links the ICD loader (ocl-icd-opencl-dev).
find_package(OpenCL REQUIRED)
add_executable(test_opencl_interop
               ${CMAKE_CURRENT_LIST_DIR}/test_opencl_interop.c)
target_link_libraries(test_opencl_interop PRIVATE mha_test_common
                      OpenCL::OpenCL)
target_compile_definitions(test_opencl_interop PRIVATE
                           _DEFAULT_SOURCE CL_TARGET_OPENCL_VERSION=120)
add_test(NAME test_opencl_interop COMMAND test_opencl_interop --jobs 2)
set_tests_properties(test_opencl_interop PROPERTIES
    ENVIRONMENT "${MHA_OPENCL_TEST_ENV}"
    TIMEOUT 600)
if(TARGET example-opencl-engine)
  add_test(NAME example_opencl_engine COMMAND example-opencl-engine)
  set_tests_properties(example_opencl_engine PROPERTIES
      ENVIRONMENT "${MHA_OPENCL_TEST_ENV}"
      TIMEOUT 300)
endif()

find_program(MHA_VALGRIND valgrind)
if(MHA_VALGRIND)
  # The Criterion runner re-executes itself for each test, so children are
  # traced (the linker PoCL runs is not) and each process writes its own
  # log; the script fails on any log with errors, since Criterion ignores
  # the exit status valgrind gives a passing worker.
  set(MHA_CL_VG_SCRIPT ${CMAKE_CURRENT_BINARY_DIR}/opencl_valgrind.cmake)
  file(WRITE ${MHA_CL_VG_SCRIPT} [=[
file(REMOVE_RECURSE "${DIR}")
file(MAKE_DIRECTORY "${DIR}")
# Under valgrind PoCL finds none of the kernels the native tests left in its
# cache (measured: valgrind emulates a CPU without AVX-512, and PoCL keys
# the cache by the CPU), so on a fresh machine, as in CI, every kernel is
# compiled by LLVM under valgrind. Unoptimised, that takes much less
# (on 2 cores with cold caches: test_opencl_valgrind 87 s instead of 259 s,
# the interop suite 165 s of CPU instead of 287 s); the host code valgrind
# checks is the same.
set(ENV{POCL_EXTRA_BUILD_FLAGS} "-cl-opt-disable")
execute_process(
  COMMAND "${VALGRIND}" --trace-children=yes "--trace-children-skip=/usr/*"
          --leak-check=full --errors-for-leak-kinds=definite --num-callers=40
          "--suppressions=${SUPP}"
          "--log-file=${DIR}/vg.%p.log"
          "${EXE}" --jobs=1 "--filter=${FILTER}"
  RESULT_VARIABLE rc)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "${EXE} under valgrind exited with ${rc}")
endif()
file(GLOB logs "${DIR}/vg.*.log")
set(clean 0)
foreach(log IN LISTS logs)
  file(READ "${log}" text)
  if(text MATCHES "ERROR SUMMARY: [1-9]")
    message(FATAL_ERROR "valgrind found errors (${log}):\n${text}")
  elseif(text MATCHES "ERROR SUMMARY: 0 errors")
    math(EXPR clean "${clean} + 1")
  endif()
  # A log with no summary is a fork that exec'd an untraced program (the
  # linker PoCL runs).
endforeach()
if(clean LESS 2)
  message(FATAL_ERROR "valgrind: expected the runner's and the test's "
                      "summaries, found ${clean} in ${DIR}")
endif()
message(STATUS "valgrind: ${clean} processes checked, no errors")
]=])
  # mha_cl_valgrind_test(NAME TARGET FILTER): one CTest test running the
  # Criterion tests of TARGET that match FILTER under valgrind.
  function(mha_cl_valgrind_test name target filter)
    add_test(NAME ${name}
             COMMAND ${CMAKE_COMMAND} -DVALGRIND=${MHA_VALGRIND}
                     -DEXE=$<TARGET_FILE:${target}> -DFILTER=${filter}
                     -DSUPP=${CMAKE_CURRENT_FUNCTION_LIST_DIR}/valgrind-pocl.supp
                     -DDIR=${CMAKE_CURRENT_BINARY_DIR}/${name}
                     -P ${MHA_CL_VG_SCRIPT})
    # PoCL's LLVM under valgrind is slow: minutes with PoCL's cache cold, as
    # in CI (see the script), 10 s warm.
    set_tests_properties(${name} PROPERTIES
        ENVIRONMENT "${MHA_OPENCL_TEST_ENV}"
        TIMEOUT 900
        LABELS "valgrind;slow")
  endfunction()
  # One forward per path (fused and not) through the whole host code.
  mha_cl_valgrind_test(test_opencl_valgrind test_opencl
                       opencl/forward_matches_cpu)
  # The interop tests whose host code the others repeat: the event chains
  # of an out-of-order queue, teardown while work is pending, the scratch
  # kept for enqueued shapes, a refusal. Each test process starts PoCL under
  # valgrind (15-20 s), so all 11 took 305 s of a fresh-clone .ci/run on
  # 2 Zen 3 cores; the sanitizer build runs every one of them.
  if(TARGET test_opencl_interop)
    set(picked frames_on_out_of_order_queue_match_host_forward
               destroy_while_pending_leaves_app_objects_usable
               enqueued_shapes_are_pinned_and_host_forward_still_works
               wrap_rejects_bad_buffers)
    list(JOIN picked "|" picked)
    mha_cl_valgrind_test(test_opencl_interop_valgrind test_opencl_interop
                         "opencl_interop/@(${picked})")
    # PoCL's cache of the kernels built under valgrind (the flags above) is
    # shared, so this suite follows test_opencl_valgrind, whose forwards
    # build them (the first interop test that builds took 114 s, the next
    # 16-26 s), and that one starts first (COST) rather than last.
    set_tests_properties(test_opencl_valgrind PROPERTIES COST 1000)
    set_tests_properties(test_opencl_interop_valgrind PROPERTIES
                         DEPENDS test_opencl_valgrind)
  endif()
endif()
