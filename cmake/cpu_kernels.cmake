# cpu_kernels.cmake: sources and per-file ISA flags of the CPU backend's
# kernel tables (backends/cpu/kernels_*.c) and CPU feature detection, plus
# their Criterion test. Each ISA file gets its own flags so the library as a
# whole is built for the baseline CPU and never with -march=native; the
# right table is picked at run time (cpu_features.c).
#
# Use from the top-level CMakeLists.txt:
#   include(cmake/cpu_kernels.cmake)
#   target_sources(mha PRIVATE ${MHA_CPU_KERNEL_SOURCES})
#   target_link_libraries(mha PRIVATE ${MHA_CPU_KERNEL_LIBS})
#   mha_add_cpu_kernel_test()          # inside if(BUILD_TESTING) or similar
#
# Source file properties are scoped to a directory: the include sets them
# for the including directory. A target defined in another directory (e.g.
# add_subdirectory(tests)) must call mha_cpu_kernel_flags() there too.
#
# Defines:
#   MHA_CPU_KERNEL_SOURCES  absolute paths of the kernel and detection sources
#   MHA_CPU_KERNEL_INCLUDES directories their includes need
#   MHA_CPU_KERNEL_LIBS     libraries they need (libm for expf)
#   mha_cpu_kernel_flags()  sets the per-file ISA flags in the calling dir
#   mha_add_cpu_kernel_test() builds tests/test_cpu_kernels.c as the
#                            executable test_cpu_kernels, linked to
#                            mha_internal, and add_test()s it

get_filename_component(MHA_CPU_KERNEL_ROOT "${CMAKE_CURRENT_LIST_DIR}/.."
                       ABSOLUTE)
set(MHA_CPU_KERNEL_DIR "${MHA_CPU_KERNEL_ROOT}/backends/cpu")

set(MHA_CPU_KERNEL_SOURCES
    "${MHA_CPU_KERNEL_DIR}/cpu_features.c"
    "${MHA_CPU_KERNEL_DIR}/kernels_scalar.c"
    "${MHA_CPU_KERNEL_DIR}/kernels_avx2.c"
    "${MHA_CPU_KERNEL_DIR}/kernels_avx512.c"
    "${MHA_CPU_KERNEL_DIR}/kernels_neon.c")

set(MHA_CPU_KERNEL_INCLUDES
    "${MHA_CPU_KERNEL_ROOT}/include"
    "${MHA_CPU_KERNEL_ROOT}/core"
    "${MHA_CPU_KERNEL_DIR}")

set(MHA_CPU_KERNEL_LIBS "")
if(NOT WIN32)
  set(MHA_CPU_KERNEL_LIBS m)
endif()

# x86-64 with a GCC-style compiler: the AVX2 and AVX-512 files get their ISA
# flags. Anywhere else they compile to getters returning NULL (they test the
# compiler's __AVX2__/__AVX512F__ macros), and kernels_neon.c needs nothing:
# NEON is baseline on AArch64.
string(TOLOWER "${CMAKE_SYSTEM_PROCESSOR}" _mha_cpu_proc)
if(_mha_cpu_proc MATCHES "^(x86_64|amd64|x64)$"
   AND CMAKE_C_COMPILER_ID MATCHES "GNU|Clang")
  set(MHA_CPU_KERNEL_X86_SIMD ON)
else()
  set(MHA_CPU_KERNEL_X86_SIMD OFF)
endif()
unset(_mha_cpu_proc)

# In the libFuzzer build (clang), UBSan's pointer-overflow check on the
# unrolled, always-inlined SIMD bodies made these two files take 100 and
# 139 s to compile (35 and 38 s without it), most of that build's time;
# the GCC sanitizer build still checks them for it.
function(mha_cpu_kernel_flags)
  if(MHA_CPU_KERNEL_X86_SIMD)
    set(avx2 -mavx2 -mfma -mf16c)
    set(avx512 -mavx512f -mavx2 -mfma)
    if(MHA_FUZZ)
      list(APPEND avx2 -fno-sanitize=pointer-overflow)
      list(APPEND avx512 -fno-sanitize=pointer-overflow)
    endif()
    set_source_files_properties("${MHA_CPU_KERNEL_DIR}/kernels_avx2.c"
      PROPERTIES COMPILE_OPTIONS "${avx2}")
    set_source_files_properties("${MHA_CPU_KERNEL_DIR}/kernels_avx512.c"
      PROPERTIES COMPILE_OPTIONS "${avx512}")
  endif()
endfunction()

mha_cpu_kernel_flags()

# The test links mha_internal, the static archive of the library's objects,
# whose internal symbols (the kernel tables) it reaches, so the kernel
# sources are compiled once per build: compiled a second time for the test
# they took half the sanitizer build's CPU time. A caller may define
# PkgConfig::MHA_CRITERION itself beforehand (the cross build's
# tests/CMakeLists.txt does, with a stand-in for Criterion).
function(mha_add_cpu_kernel_test)
  if(NOT TARGET PkgConfig::MHA_CRITERION)
    find_package(PkgConfig REQUIRED)
    pkg_check_modules(MHA_CRITERION REQUIRED IMPORTED_TARGET criterion)
  endif()
  add_executable(test_cpu_kernels
    "${MHA_CPU_KERNEL_ROOT}/tests/test_cpu_kernels.c")
  target_include_directories(test_cpu_kernels PRIVATE
    ${MHA_CPU_KERNEL_INCLUDES})
  target_link_libraries(test_cpu_kernels PRIVATE
    mha_internal PkgConfig::MHA_CRITERION ${MHA_CPU_KERNEL_LIBS})
  add_test(NAME cpu_kernels COMMAND test_cpu_kernels)
endfunction()
