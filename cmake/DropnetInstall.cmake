# Installs the client library as a CMake package:
#   find_package(dropnet CONFIG REQUIRED)  ->  target dropnet::client, #include "dropnet/client.h"
# with the generated dropnet.v1 and grpc.health.v1 headers (dropnet/v1/, grpc/health/v1/), and
# the two programs. dropnet::dataio goes along as the client library's private dependency.
include(GNUInstallDirs)
include(CMakePackageConfigHelpers)

set_target_properties(dropnet_proto PROPERTIES EXPORT_NAME proto)
set_target_properties(dropnet_health_proto PROPERTIES EXPORT_NAME health_proto)
set_target_properties(dropnet_client PROPERTIES EXPORT_NAME client)
set_target_properties(dropnet_dataio PROPERTIES EXPORT_NAME dataio)

install(TARGETS dropnet_client dropnet_proto dropnet_health_proto dropnet_dataio
        EXPORT dropnetTargets
        ARCHIVE DESTINATION ${CMAKE_INSTALL_LIBDIR}
        INCLUDES DESTINATION ${CMAKE_INSTALL_INCLUDEDIR})
install(TARGETS dropnet dropnet-server RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR})
install(FILES client/client.h DESTINATION ${CMAKE_INSTALL_INCLUDEDIR}/dropnet)
install(DIRECTORY ${PROJECT_BINARY_DIR}/proto/dropnet ${PROJECT_BINARY_DIR}/proto/grpc
        DESTINATION ${CMAKE_INSTALL_INCLUDEDIR} FILES_MATCHING PATTERN "*.h")
install(EXPORT dropnetTargets NAMESPACE dropnet:: DESTINATION ${CMAKE_INSTALL_LIBDIR}/cmake/dropnet)

configure_package_config_file(cmake/dropnetConfig.cmake.in
  ${PROJECT_BINARY_DIR}/dropnetConfig.cmake
  INSTALL_DESTINATION ${CMAKE_INSTALL_LIBDIR}/cmake/dropnet)
write_basic_package_version_file(${PROJECT_BINARY_DIR}/dropnetConfigVersion.cmake
  COMPATIBILITY SameMajorVersion)
install(FILES ${PROJECT_BINARY_DIR}/dropnetConfig.cmake ${PROJECT_BINARY_DIR}/dropnetConfigVersion.cmake
        DESTINATION ${CMAKE_INSTALL_LIBDIR}/cmake/dropnet)
