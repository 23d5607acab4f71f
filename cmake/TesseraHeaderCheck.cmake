# tessera_add_header_check(): target `check_headers` compiles every public header in a translation unit of
# its own (included twice: the include guard must hold), so a header that leans on its includer's includes
# fails to build. Flags are those of tests (tessera_dev). Incremental like any object library.
# Not part of `all` unless TESSERA_CHECK_HEADERS=ON: on a clean tree it costs about one compile per header
# (~50 headers, ~1 s each); run `cmake --build build --target check_headers` before committing headers.
option(TESSERA_CHECK_HEADERS "Build the self-contained-header check with everything" OFF)

function(tessera_add_header_check)
  file(GLOB_RECURSE headers CONFIGURE_DEPENDS RELATIVE ${PROJECT_SOURCE_DIR}/include
       ${PROJECT_SOURCE_DIR}/include/tessera/*.hpp)
  set(sources)
  foreach(h IN LISTS headers)
    string(MAKE_C_IDENTIFIER ${h} id)
    set(src ${PROJECT_BINARY_DIR}/header_check/${id}.cpp)
    file(CONFIGURE OUTPUT ${src} CONTENT "#include \"${h}\"\n#include \"${h}\"\n")
    list(APPEND sources ${src})
  endforeach()
  set(exclude EXCLUDE_FROM_ALL)
  if(TESSERA_CHECK_HEADERS)
    set(exclude)
  endif()
  add_library(check_headers OBJECT ${exclude} ${sources})
  target_link_libraries(check_headers PRIVATE tessera_dev)
endfunction()
