# Warning, sanitizer and fuzzer flags. Only the options turn strictness on; the plain build
# gets warnings but never fails on them.
set(KOSMOS_WARNINGS -Wall -Wextra -Wshadow -Wformat=2 -Wstrict-prototypes -Wmissing-prototypes
                    -Wno-unused-parameter -Wvla)
if(KOSMOS_WERROR)
  list(APPEND KOSMOS_WARNINGS -Werror)
endif()

if(KOSMOS_SANITIZE)
  add_compile_options(-fsanitize=address,undefined -fno-sanitize-recover=undefined
                      -fno-omit-frame-pointer)
  add_link_options(-fsanitize=address,undefined)
endif()

if(KOSMOS_FUZZ AND NOT CMAKE_C_COMPILER_ID MATCHES "Clang")
  message(WARNING "KOSMOS_FUZZ needs clang (configure with CC=clang); fuzzers are off")
  set(KOSMOS_FUZZ OFF)
endif()
if(KOSMOS_FUZZ)
  # Instrument every library for coverage; the fuzz targets add -fsanitize=fuzzer at link time.
  add_compile_options(-fsanitize=fuzzer-no-link,address,undefined -fno-omit-frame-pointer)
  add_link_options(-fsanitize=address,undefined)
endif()

# kosmos_target_warnings(target): our own code gets the warning set; generated code does not.
function(kosmos_target_warnings target)
  target_compile_options(${target} PRIVATE ${KOSMOS_WARNINGS})
endfunction()
