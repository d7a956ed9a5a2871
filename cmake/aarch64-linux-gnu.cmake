# aarch64-linux-gnu.cmake: cross-compiles libmha and its tests for AArch64
# with Debian's gcc-aarch64-linux-gnu and runs them under qemu-aarch64, so
# the NEON kernels are built and tested on an x86-64 host. Criterion and
# cJSON for arm64 come from a private sysroot made by
# scripts/arm64-sysroot.sh; pass its path as -DMHA_ARM64_SYSROOT=DIR.
set(CMAKE_SYSTEM_NAME Linux)
set(CMAKE_SYSTEM_PROCESSOR aarch64)
set(CMAKE_C_COMPILER aarch64-linux-gnu-gcc)
set(CMAKE_LIBRARY_ARCHITECTURE aarch64-linux-gnu)

list(APPEND CMAKE_TRY_COMPILE_PLATFORM_VARIABLES MHA_ARM64_SYSROOT)
if(NOT MHA_ARM64_SYSROOT)
  message(FATAL_ERROR "set -DMHA_ARM64_SYSROOT=DIR (scripts/arm64-sysroot.sh DIR makes it)")
endif()
set(_lib "${MHA_ARM64_SYSROOT}/usr/lib/aarch64-linux-gnu")
set(CMAKE_FIND_ROOT_PATH /usr/aarch64-linux-gnu "${MHA_ARM64_SYSROOT}")
set(CMAKE_FIND_ROOT_PATH_MODE_PROGRAM NEVER)
set(CMAKE_FIND_ROOT_PATH_MODE_LIBRARY ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_INCLUDE ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_PACKAGE ONLY)
set(ENV{PKG_CONFIG_LIBDIR} "${_lib}/pkgconfig:${MHA_ARM64_SYSROOT}/usr/share/pkgconfig")
set(ENV{PKG_CONFIG_SYSROOT_DIR} "${MHA_ARM64_SYSROOT}")
set(CMAKE_EXE_LINKER_FLAGS_INIT "-Wl,-rpath-link,${_lib} -Wl,-rpath-link,${MHA_ARM64_SYSROOT}/lib/aarch64-linux-gnu")
set(CMAKE_SHARED_LINKER_FLAGS_INIT "${CMAKE_EXE_LINKER_FLAGS_INIT}")
# Tests run through qemu; the guest's loader finds the sysroot's libraries.
# The loader is the cross toolchain's (-L), so its libc must be too: without
# /usr/aarch64-linux-gnu/lib first, a host that has libc6:arm64 installed
# hands ld.so that (different) build of libc.so.6 through /etc/ld.so.cache,
# and pthread_create then loops forever in the mismatched loader's data.
set(CMAKE_CROSSCOMPILING_EMULATOR env "LD_LIBRARY_PATH=/usr/aarch64-linux-gnu/lib:${_lib}:${MHA_ARM64_SYSROOT}/lib/aarch64-linux-gnu" qemu-aarch64 -L /usr/aarch64-linux-gnu)
