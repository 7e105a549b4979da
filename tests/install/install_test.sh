#!/usr/bin/env bash
# memtrain as a library, from outside its tree:
#   find_package     `cmake --install` of this build into a temporary prefix; then
#                    find_package/ (a separate CMake project) configured against that prefix:
#                    checkpoint_roundtrip (memtrain::checkpoint, configured with MPI and protobuf
#                    hidden from CMake) trains a tiny GPT-2, saves, loads and compares a
#                    checkpoint; launcher_job (memtrain::launcher) parses a job spec.
#   add_subdirectory add_subdirectory/ as a parent project that adds this source tree with
#                    MEMTRAIN_BUILD_TESTS=OFF; configures it and compiles the parent's file and a
#                    few of memtrain's own objects (core, checkpoint, the generated job.pb.cc):
#                    include paths must not depend on the parent's CMAKE_SOURCE_DIR/BINARY_DIR.
# Usage: install_test.sh CASE BUILD_DIR SOURCE_DIR [CMAKE] [CXX]
set -u
CASE=$1 BUILD=$2 SRC=$3 CMAKE=${4:-cmake} CXX=${5:-c++}
HERE=$SRC/tests/install
W=$(mktemp -d)
trap 'rm -rf "$W"' EXIT
fail() { echo "FAIL: $*"; exit 1; }
GEN=()
command -v ninja >/dev/null && GEN=(-G Ninja)
# A consumer's own compile flags: no optimisation (fast to build), quiet configure.
configure() {
  "$CMAKE" "${GEN[@]}" -DCMAKE_CXX_COMPILER="$CXX" -Wno-dev "$@" >"$W/configure.log" 2>&1 \
    || { cat "$W/configure.log"; fail "configure $*"; }
}
build() {
  "$CMAKE" --build "$@" -j 2 >"$W/build.log" 2>&1 || { cat "$W/build.log"; fail "build $*"; }
}

case $CASE in
find_package)
  P=$W/prefix
  "$CMAKE" --install "$BUILD" --prefix "$P" >"$W/install.log" 2>&1 \
    || { cat "$W/install.log"; fail "cmake --install"; }
  for f in lib/cmake/memtrain/memtrainConfig.cmake lib/cmake/memtrain/memtrainConfigVersion.cmake \
           lib/libmemtrain_core.a lib/libmemtrain_checkpoint.a lib/libmemtrain_launcher.a \
           include/core/allocator.h include/core/model/gpt2.h include/optim/adamw.h \
           include/checkpoint/checkpoint.h include/launcher/job.pb.h \
           include/parallel/communicator.h \
           bin/trainer; do
    [ -e "$P/$f" ] || fail "the install lacks $f"
  done
  ! grep -rq "$SRC\|$BUILD" "$P/lib/cmake/memtrain" || fail "the installed package names $SRC"

  # memtrain::checkpoint with MPI and protobuf out of CMake's reach.
  configure -S "$HERE/find_package" -B "$W/ckpt" -DCMAKE_PREFIX_PATH="$P" -DWITH_LAUNCHER=OFF \
    -DCMAKE_DISABLE_FIND_PACKAGE_MPI=ON -DCMAKE_DISABLE_FIND_PACKAGE_Protobuf=ON
  grep -q "^memtrain_DIR:PATH=$P/" "$W/ckpt/CMakeCache.txt" || fail "memtrain was not found in $P"
  build "$W/ckpt" --target checkpoint_roundtrip
  "$W/ckpt/checkpoint_roundtrip" "$W/run" || fail "checkpoint_roundtrip"

  configure -S "$HERE/find_package" -B "$W/all" -DCMAKE_PREFIX_PATH="$P"
  build "$W/all" --target launcher_job
  "$W/all/launcher_job" || fail "launcher_job"
  ;;
add_subdirectory)
  [ ${#GEN[@]} -gt 0 ] || fail "needs ninja (scripts/setup.sh installs it)"
  mkdir -p "$W/parent"
  cp "$HERE/add_subdirectory/CMakeLists.txt" "$HERE/add_subdirectory/uses_memtrain.cc" "$W/parent/"
  configure -S "$W/parent" -B "$W/build" -DMEMTRAIN_SOURCE="$SRC"
  # A few of memtrain's objects (its own include path, the new library, the generated protobuf
  # code), found by name in the build graph.
  objs=()
  for o in memtrain_core.dir/core/allocator.cc.o \
           memtrain_checkpoint.dir/checkpoint/checkpoint.cc.o \
           'memtrain_job_proto.dir/.*job.pb.cc.o'; do
    t=$(ninja -C "$W/build" -t targets all | cut -d: -f1 | grep -E -m1 "memtrain/CMakeFiles/$o\$") \
      || fail "no object $o in the parent's build"
    objs+=("$t")
  done
  build "$W/build" --target uses_memtrain "${objs[@]}"
  echo "built uses_memtrain and ${objs[*]}"
  ;;
*)
  fail "unknown case $CASE"
  ;;
esac
echo PASS
