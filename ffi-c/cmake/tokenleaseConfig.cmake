# CMake package config for tokenlease (installed by ffi-c/install.sh into
# PREFIX/lib/cmake/tokenlease). Usage:
#
#   find_package(tokenlease REQUIRED)      # with CMAKE_PREFIX_PATH=PREFIX
#   target_link_libraries(app PRIVATE tokenlease::tokenlease)          # shared library
#   target_link_libraries(app PRIVATE tokenlease::tokenlease_static)   # static library
get_filename_component(_tl_prefix "${CMAKE_CURRENT_LIST_DIR}/../../.." ABSOLUTE)

find_package(Threads REQUIRED)

if(NOT TARGET tokenlease::tokenlease)
  add_library(tokenlease::tokenlease SHARED IMPORTED)
  set_target_properties(tokenlease::tokenlease PROPERTIES
    IMPORTED_LOCATION "${_tl_prefix}/lib/libtokenlease.so"
    INTERFACE_INCLUDE_DIRECTORIES "${_tl_prefix}/include"
    INTERFACE_LINK_LIBRARIES Threads::Threads)
endif()

if(NOT TARGET tokenlease::tokenlease_static)
  add_library(tokenlease::tokenlease_static STATIC IMPORTED)
  set_target_properties(tokenlease::tokenlease_static PROPERTIES
    IMPORTED_LOCATION "${_tl_prefix}/lib/libtokenlease.a"
    INTERFACE_INCLUDE_DIRECTORIES "${_tl_prefix}/include"
    INTERFACE_LINK_LIBRARIES "Threads::Threads;${CMAKE_DL_LIBS};m;rt;util")
endif()

set(tokenlease_INCLUDE_DIRS "${_tl_prefix}/include")
set(tokenlease_LIBRARIES tokenlease::tokenlease)
set(tokenlease_FOUND TRUE)
unset(_tl_prefix)
