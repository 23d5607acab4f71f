# cmake -P driver for the install_consumer test (see CMakeLists.txt). Variables: BUILD_DIR, CONSUMER_DIR,
# WORK_DIR, EXPECT_CUDA, CXX_COMPILER, CCACHE (may be empty).
function(run what)
  execute_process(COMMAND ${ARGN} RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "install test: ${what} failed (${rc})\n${out}\n${err}")
  endif()
  set(run_output "${out}" PARENT_SCOPE)
endfunction()

set(prefix ${WORK_DIR}/prefix)
file(REMOVE_RECURSE ${WORK_DIR})

run("cmake --install" ${CMAKE_COMMAND} --install ${BUILD_DIR} --prefix ${prefix})

set(launcher)
if(CCACHE)
  set(launcher -DCMAKE_CXX_COMPILER_LAUNCHER=${CCACHE})
endif()
run("configuring the consumer" ${CMAKE_COMMAND} -S ${CONSUMER_DIR} -B ${WORK_DIR}/build
    -DCMAKE_BUILD_TYPE=Release -DCMAKE_CXX_COMPILER=${CXX_COMPILER} ${launcher}
    -DCMAKE_PREFIX_PATH=${prefix} -DEXPECTED_PREFIX=${prefix} -DEXPECT_CUDA=${EXPECT_CUDA})
run("building the consumer" ${CMAKE_COMMAND} --build ${WORK_DIR}/build)
run("running the consumer" ${WORK_DIR}/build/consumer)
message(STATUS "consumer output:\n${run_output}")

if(NOT run_output MATCHES "tessera consumer ok")
  message(FATAL_ERROR "install test: unexpected consumer output")
endif()
if(EXPECT_CUDA AND NOT run_output MATCHES "cuda devices: [0-9]+")
  message(FATAL_ERROR "install test: the installed package lacks tessera::cuda")
endif()
file(REMOVE_RECURSE ${WORK_DIR})
