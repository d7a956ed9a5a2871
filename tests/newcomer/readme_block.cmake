# readme_block.cmake: cmake -P script of the readme_example_text test. Fails
# unless the ```c block that follows MARKER in README is byte for byte
# EXAMPLE, so the README's API example is the program the tests build and
# run (example-readme).
file(READ ${README} readme)
file(READ ${EXAMPLE} example)
string(FIND "${readme}" "${MARKER}" at)
if(at LESS 0)
  message(FATAL_ERROR "${README} has no line '${MARKER}' before its API example")
endif()
string(SUBSTRING "${readme}" ${at} -1 rest)
string(FIND "${rest}" "```c\n" open)
if(open LESS 0)
  message(FATAL_ERROR "${README}: no ```c block after '${MARKER}'")
endif()
math(EXPR open "${open} + 5")
string(SUBSTRING "${rest}" ${open} -1 rest)
string(FIND "${rest}" "\n```" close)
math(EXPR close "${close} + 1")
string(SUBSTRING "${rest}" 0 ${close} block)
if(NOT block STREQUAL example)
  message(FATAL_ERROR "the README's API example differs from ${EXAMPLE}: "
                      "copy the file into the README's block")
endif()
