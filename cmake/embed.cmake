# embed.cmake: embeds build-time files (SPIR-V from glslc, OpenCL C sources)
# in the library as C arrays, so kernels ship inside libmha and no kernel
# source sits in a C string in backends/.
#
#   mha_embed(<name> <out_dir> <file>...)
# writes <out_dir>/<name>.c and <out_dir>/<name>.h declaring
#   extern const mha_embedded_file <name>[]; extern const size_t <name>_count;
# Each entry is {file name without directory, bytes, size}; the bytes are
# 16-byte aligned (SPIR-V wants 4) and followed by a NUL not counted in size
# (OpenCL C wants a C string). Regenerated when an input changes.

set(MHA_EMBED_SCRIPT "${CMAKE_CURRENT_LIST_DIR}/embed_run.cmake")

function(mha_embed name out_dir)
  set(inputs ${ARGN})
  add_custom_command(
    OUTPUT "${out_dir}/${name}.c" "${out_dir}/${name}.h"
    COMMAND "${CMAKE_COMMAND}" "-DNAME=${name}" "-DOUT_DIR=${out_dir}"
            "-DINPUTS=${inputs}" -P "${MHA_EMBED_SCRIPT}"
    DEPENDS ${inputs} "${MHA_EMBED_SCRIPT}"
    COMMENT "Embedding ${name}"
    VERBATIM)
endfunction()
