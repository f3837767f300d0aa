# Compiler flags shared by every dropnet target (an interface target, so they stay per target).
# Build-only: targets link it PRIVATE, the installed ones as $<BUILD_INTERFACE:...>, and it is not
# exported, so a consumer of the package never inherits these flags.
add_library(dropnet_options INTERFACE)
add_library(dropnet::options ALIAS dropnet_options)
target_compile_options(dropnet_options INTERFACE -Wall -Wextra -Wno-unused-parameter)
if(CMAKE_BUILD_TYPE STREQUAL "Release")
  target_compile_options(dropnet_options INTERFACE -O3)
endif()
if(DROPNET_NATIVE)
  target_compile_options(dropnet_options INTERFACE -march=native)
endif()
if(DROPNET_SANITIZE)
  target_compile_options(dropnet_options INTERFACE -fsanitize=${DROPNET_SANITIZE} -fno-omit-frame-pointer -g)
  target_link_options(dropnet_options INTERFACE -fsanitize=${DROPNET_SANITIZE})
  if(DROPNET_SANITIZE MATCHES "thread")
    # protobuf's map_field.h adds members to MapFieldBase when __SANITIZE_THREAD__ is defined;
    # Debian's libprotobuf is built without them, so our code must see the same layout.
    target_compile_options(dropnet_options INTERFACE -U__SANITIZE_THREAD__)
  endif()
endif()
if(DROPNET_FUZZ)
  # libFuzzer targets (fuzz/): coverage instrumentation everywhere, ASan and UBSan, and any
  # undefined behaviour stops the run so that the fuzzer keeps the input.
  if(NOT CMAKE_CXX_COMPILER_ID STREQUAL "Clang")
    message(FATAL_ERROR "DROPNET_FUZZ needs clang (e.g. -DCMAKE_CXX_COMPILER=clang++-14)")
  endif()
  target_compile_options(dropnet_options INTERFACE -fsanitize=fuzzer-no-link,address,undefined
    -fno-sanitize-recover=undefined -fno-omit-frame-pointer -g)
  target_link_options(dropnet_options INTERFACE -fsanitize=address,undefined)
endif()
# Compile with ccache when present: rebuilds after small edits stay cheap on two cores. Only at
# the top level: a parent project chooses its own launcher.
find_program(DROPNET_CCACHE ccache)
if(DROPNET_CCACHE AND PROJECT_IS_TOP_LEVEL)
  set(CMAKE_CXX_COMPILER_LAUNCHER ${DROPNET_CCACHE} CACHE STRING "" FORCE)
endif()
