# Install rules and memtrain's CMake package.
#
#   cmake --install build --prefix /opt/memtrain
#   # another project, configured with -DCMAKE_PREFIX_PATH=/opt/memtrain:
#   find_package(memtrain REQUIRED)
#   target_link_libraries(app PRIVATE memtrain::checkpoint)
#
# Layout: lib/libmemtrain_*.a; include/{core,optim,parallel,checkpoint,launcher}/... as in the
# source tree (the same #include "core/..." lines work), plus the generated launcher/job.pb.h;
# bin/trainer, bin/make_tokens; lib/cmake/memtrain/ (the package).
#
# Three export sets, so that a program of core / optim / checkpoint needs neither MPI nor protobuf:
#   memtrainTargets          memtrain::core, memtrain::optim, memtrain::offload (+ liburing),
#                            memtrain::checkpoint
#   memtrainParallelTargets  memtrain::parallel, memtrain::federated    (+ MPI)
#   memtrainLauncherTargets  memtrain::job_proto, memtrain::launcher    (+ protobuf, parallel)
# memtrainConfig.cmake (cmake/memtrainConfig.cmake.in) finds what each set needs.
#
# The build tree is a package too: find_package(memtrain) with memtrain_DIR=<build>/cmake uses the
# libraries and headers where they are (tests/docs/compile_snippets.sh does).
include(GNUInstallDirs)
include(CMakePackageConfigHelpers)

set(MEMTRAIN_PACKAGE_DIR ${CMAKE_INSTALL_LIBDIR}/cmake/memtrain)

install(TARGETS memtrain_core memtrain_optim memtrain_offload memtrain_checkpoint
  EXPORT memtrainTargets
  ARCHIVE DESTINATION ${CMAKE_INSTALL_LIBDIR} COMPONENT Development)
install(TARGETS memtrain_parallel memtrain_federated EXPORT memtrainParallelTargets
  ARCHIVE DESTINATION ${CMAKE_INSTALL_LIBDIR} COMPONENT Development)
install(TARGETS memtrain_job_proto memtrain_launcher EXPORT memtrainLauncherTargets
  ARCHIVE DESTINATION ${CMAKE_INSTALL_LIBDIR} COMPONENT Development)
install(TARGETS trainer make_tokens RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR} COMPONENT Runtime)

# Public headers keep their folders; INSTALL_INTERFACE of the targets is <prefix>/include.
install(DIRECTORY
    ${PROJECT_SOURCE_DIR}/core ${PROJECT_SOURCE_DIR}/optim ${PROJECT_SOURCE_DIR}/parallel
    ${PROJECT_SOURCE_DIR}/offload ${PROJECT_SOURCE_DIR}/federated ${PROJECT_SOURCE_DIR}/checkpoint
    ${PROJECT_SOURCE_DIR}/launcher
  DESTINATION include COMPONENT Development
  FILES_MATCHING PATTERN "*.h")
install(FILES ${PROJECT_BINARY_DIR}/launcher/job.pb.h ${PROJECT_SOURCE_DIR}/launcher/job.proto
  DESTINATION include/launcher COMPONENT Development)

foreach(set memtrainTargets memtrainParallelTargets memtrainLauncherTargets)
  install(EXPORT ${set} NAMESPACE memtrain:: DESTINATION ${MEMTRAIN_PACKAGE_DIR}
    COMPONENT Development)
  export(EXPORT ${set} NAMESPACE memtrain:: FILE ${PROJECT_BINARY_DIR}/cmake/${set}.cmake)
endforeach()

# One config file serves the install and the build tree: it only includes its neighbours.
configure_package_config_file(${PROJECT_SOURCE_DIR}/cmake/memtrainConfig.cmake.in
  ${PROJECT_BINARY_DIR}/cmake/memtrainConfig.cmake
  INSTALL_DESTINATION ${MEMTRAIN_PACKAGE_DIR} NO_SET_AND_CHECK_MACRO)
# 0.x: a minor version may break the API, so only the same major.minor matches.
write_basic_package_version_file(${PROJECT_BINARY_DIR}/cmake/memtrainConfigVersion.cmake
  COMPATIBILITY SameMinorVersion)
install(FILES ${PROJECT_BINARY_DIR}/cmake/memtrainConfig.cmake
              ${PROJECT_BINARY_DIR}/cmake/memtrainConfigVersion.cmake
  DESTINATION ${MEMTRAIN_PACKAGE_DIR} COMPONENT Development)
