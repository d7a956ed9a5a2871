# newcomer.cmake: tests of the path a new user takes, included from
# tests/CMakeLists.txt: the README's API example is examples/readme.c byte
# for byte and runs; example-forward runs; mha-info --json reads as a
# script expects; bench/plot.py draws two runs apart; export_safetensors.py
# says in one line that its input is missing.
if(NOT MHA_BUILD_TOOLS OR CMAKE_CROSSCOMPILING)
  return()
endif()
set(here ${CMAKE_CURRENT_LIST_DIR})

add_test(NAME readme_example_text
         COMMAND ${CMAKE_COMMAND} -DREADME=${PROJECT_SOURCE_DIR}/README.md
                 -DEXAMPLE=${PROJECT_SOURCE_DIR}/examples/readme.c
                 "-DMARKER=<!-- examples/readme.c -->"
                 -P ${here}/readme_block.cmake)
add_test(NAME readme_example COMMAND example-readme)
add_test(NAME example_forward COMMAND example-forward)
set_tests_properties(readme_example example_forward PROPERTIES
                     ENVIRONMENT "${MHA_TEST_ENV}")

add_test(NAME mha_info_json
         COMMAND /usr/bin/python3 ${here}/mha_info_json.py $<TARGET_FILE:mha-info>)
set_tests_properties(mha_info_json PROPERTIES ENVIRONMENT "${MHA_TEST_ENV}")

execute_process(COMMAND /usr/bin/python3 -c "import matplotlib"
                RESULT_VARIABLE MHA_NO_MATPLOTLIB OUTPUT_QUIET ERROR_QUIET)
if(MHA_NO_MATPLOTLIB EQUAL 0)
  add_test(NAME plot
           COMMAND /usr/bin/python3 ${here}/plot_test.py
                   ${PROJECT_SOURCE_DIR}/bench/plot.py
                   ${PROJECT_SOURCE_DIR}/bench/results/quick-2core.json
                   ${here}/quick-2core-b.json)
endif()

execute_process(COMMAND /usr/bin/python3 -c "import numpy"
                RESULT_VARIABLE MHA_NO_NUMPY OUTPUT_QUIET ERROR_QUIET)
if(MHA_NO_NUMPY EQUAL 0)
  add_test(NAME export_safetensors_missing_input
           COMMAND /usr/bin/python3
                   ${PROJECT_SOURCE_DIR}/tools/export_safetensors.py
                   ${CMAKE_CURRENT_BINARY_DIR}/missing.pt
                   ${CMAKE_CURRENT_BINARY_DIR}/missing.safetensors)
  # one line naming the file and the OS reason, no traceback
  set_tests_properties(export_safetensors_missing_input PROPERTIES
    PASS_REGULAR_EXPRESSION
      "^export_safetensors.py: [^\n]*missing.pt: No such file or directory\n$"
    FAIL_REGULAR_EXPRESSION "Traceback")
endif()
