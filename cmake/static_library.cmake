# static_library.cmake: the installed static libmha.a. A static archive keeps
# every non-static symbol global at link time, hidden or not, so volk's
# function pointers (vkCreateInstance, vkCmdDispatch, ... as variables) and
# libmha's internal functions would collide with an engine that links
# libvulkan or defines the same names. On ELF toolchains the objects are
# merged into one relocatable object (ld -r) whose hidden symbols are then
# made local (objcopy --localize-hidden): only the mha_* API stays global.
set(_mha_objs $<TARGET_OBJECTS:mha_objects> ${MHA_BACKEND_OBJECTS})
if(UNIX AND NOT APPLE AND CMAKE_OBJCOPY AND CMAKE_LINKER)
  set(_merged "${CMAKE_CURRENT_BINARY_DIR}/mha_merged.o")
  add_custom_command(
    OUTPUT "${_merged}"
    COMMAND "${CMAKE_LINKER}" -r -o "${_merged}" ${_mha_objs}
    COMMAND "${CMAKE_OBJCOPY}" --localize-hidden "${_merged}"
    DEPENDS ${_mha_objs}
    COMMAND_EXPAND_LISTS
    COMMENT "Merging libmha's objects and localizing hidden symbols"
    VERBATIM)
  add_library(mha_static STATIC "${_merged}")
  set_target_properties(mha_static PROPERTIES LINKER_LANGUAGE C)
  # File-level DEPENDS on another target's objects do not order the build:
  # the object libraries must be built before the merge runs.
  add_dependencies(mha_static mha_objects ${MHA_BACKEND_TARGETS})
else()
  add_library(mha_static STATIC ${_mha_objs})
endif()
