# Finds the system libraries. Required ones stop the configure with the package to install;
# optional ones turn their feature off with a message (see docs/dependencies.md).
find_package(PkgConfig REQUIRED)

function(kosmos_require_pkg var module debian_pkg)
  pkg_check_modules(${var} IMPORTED_TARGET ${module})
  if(NOT ${var}_FOUND)
    message(FATAL_ERROR "${module} not found: install the Debian package ${debian_pkg} "
                        "(ops/install-deps.sh installs everything)")
  endif()
endfunction()

function(kosmos_optional_pkg var module feature)
  pkg_check_modules(${var} IMPORTED_TARGET ${module})
  if(NOT ${var}_FOUND)
    message(STATUS "${module} not found: ${feature} disabled (ops/install-deps.sh installs it)")
  endif()
  set(${var}_FOUND ${${var}_FOUND} PARENT_SCOPE)
endfunction()

kosmos_require_pkg(PROTOBUF_C libprotobuf-c libprotobuf-c-dev)
kosmos_require_pkg(JANSSON jansson libjansson-dev)
find_program(PROTOC_C NAMES protoc-c protoc-gen-c)
if(NOT PROTOC_C)
  message(FATAL_ERROR "protoc-c not found: install the Debian package protobuf-c-compiler")
endif()

kosmos_optional_pkg(CMOCKA cmocka "the test suite")
set(KOSMOS_HAVE_TESTS OFF)
if(KOSMOS_TESTS AND CMOCKA_FOUND)
  set(KOSMOS_HAVE_TESTS ON)
endif()

find_library(MATH_LIBRARY m)
