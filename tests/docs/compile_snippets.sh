#!/usr/bin/env bash
# Compiles every C++ snippet of README.md and docs/*.md against this build's libraries.
#
# A snippet is a fenced block opened with ```cpp (or c++, cc, cxx). One that contains `int main`
# is a whole program: compiled and linked as it stands. One that defines functions or classes (a
# definition opening at column 0 and a `}` closing it at column 0) is a file of definitions: compiled after
# memtrain's main public headers and `using namespace memtrain;`. Any other is a fragment: its preprocessor
# lines go to the top of a file that already includes memtrain's main public headers and says
# `using namespace memtrain;`; the rest becomes the body of a function whose parameters are the
# free names the docs' loops use (int B, T, steps). Errors name the Markdown file and line.
# Programs link against memtrain::launcher and memtrain::checkpoint, found with
# find_package(memtrain) in BUILD_DIR/cmake (the build tree's package).
#
# Usage: compile_snippets.sh BUILD_DIR SOURCE_DIR [CMAKE] [CXX]
# Prints PASS/FAIL per snippet; exit status 1 if any fails.
set -u
BUILD=$(cd "$1" && pwd) SRC=$(cd "$2" && pwd) CMAKE=${3:-cmake} CXX=${4:-c++}
W=$(mktemp -d)
trap 'rm -rf "$W"' EXIT
GEN=()
command -v ninja >/dev/null && GEN=(-G Ninja)

# Headers every fragment sees (those of them that exist).
HEADERS=(core/status.h core/tensor.h core/threads.h core/engine.h core/model/gpt2.h
         core/data_loader.h core/evaluate.h core/llmc.h core/safetensors.h optim/optimizer.h optim/adamw.h
         optim/lion.h optim/sgd.h optim/schedule.h checkpoint/checkpoint.h
         parallel/communicator.h parallel/data_parallel.h launcher/spec.h)

# Extract: snippet_N.txt (the block) and snippet_N.where ("file line" of its first line).
n=0
cd "$SRC"
for md in README.md docs/*.md; do
  [ -f "$md" ] || continue
  n=$(awk -v md="$md" -v out="$W" -v n="$n" '
    BEGIN { inside = 0 }
    !inside && /^ *```[ \t]*([cC][pP][pP]|[cC]\+\+|[cC][cC]|[cC][xX][xX])([ \t{].*)?$/ {
      inside = 1; n++; f = out "/snippet_" n ".txt"; printf "" > f
      printf "%s %d\n", md, NR + 1 > (out "/snippet_" n ".where"); next }
    inside && /^ *```[ \t]*$/ { inside = 0; close(f); next }
    inside { print >> f }
    END { print n }' "$md")
done
cd - >/dev/null
if [ "$n" -eq 0 ]; then echo "no C++ snippets"; exit 0; fi

# One source file per snippet, and a CMake project that builds each as its own target.
{
  echo 'cmake_minimum_required(VERSION 3.25)'
  echo 'project(memtrain_doc_snippets LANGUAGES CXX)'
  echo 'find_package(memtrain REQUIRED COMPONENTS checkpoint launcher)'
} >"$W/CMakeLists.txt"
for i in $(seq 1 "$n"); do
  read -r md line <"$W/snippet_$i.where"
  txt=$W/snippet_$i.txt cc=$W/snippet_$i.cc
  if grep -Eq '\bint[[:space:]]+main[[:space:]]*\(' "$txt"; then
    { printf '#line %d "%s"\n' "$line" "$md"; cat "$txt"; } >"$cc"
    echo "add_executable(snippet_$i snippet_$i.cc)" >>"$W/CMakeLists.txt"
  elif { grep -Eq '^[A-Za-z_][A-Za-z0-9_:<>,*& ]*[ *&]+[A-Za-z_][A-Za-z0-9_:]*\(.*[{,][[:space:]]*$' "$txt" ||
         grep -Eq '^(class|struct) ' "$txt"; } && grep -Eq '^\}' "$txt"; then
    {
      echo "// $md:$line, definitions"
      for h in "${HEADERS[@]}"; do [ -f "$SRC/$h" ] && echo "#include \"$h\""; done
      echo 'using namespace memtrain;'
      printf '#line %d "%s"\n' "$line" "$md"
      cat "$txt"
    } >"$cc"
    echo "add_library(snippet_$i OBJECT snippet_$i.cc)" >>"$W/CMakeLists.txt"
  else
    {
      echo "// $md:$line, a fragment"
      for h in "${HEADERS[@]}"; do [ -f "$SRC/$h" ] && echo "#include \"$h\""; done
      # The fragment's own preprocessor lines, each at its line in the Markdown file.
      awk -v md="$md" -v line="$line" \
        '/^[ \t]*#/ { printf "#line %d \"%s\"\n%s\n", line + NR - 1, md, $0 }' "$txt"
      echo 'using namespace memtrain;'
      echo '[[maybe_unused]] static void Snippet([[maybe_unused]] int B, [[maybe_unused]] int T,'
      echo '                                     [[maybe_unused]] int steps) {'
      echo '{'
      printf '#line %d "%s"\n' "$line" "$md"
      awk '{ if ($0 ~ /^[ \t]*#/) print ""; else print }' "$txt"
      echo '}'
      echo '}'
    } >"$cc"
    echo "add_library(snippet_$i OBJECT snippet_$i.cc)" >>"$W/CMakeLists.txt"
  fi
  echo "target_link_libraries(snippet_$i PRIVATE memtrain::launcher memtrain::checkpoint)" \
    >>"$W/CMakeLists.txt"
done

if ! "$CMAKE" "${GEN[@]}" -S "$W" -B "$W/build" -DCMAKE_CXX_COMPILER="$CXX" \
       -Dmemtrain_DIR="$BUILD/cmake" -Wno-dev >"$W/configure.log" 2>&1; then
  cat "$W/configure.log"
  echo "FAIL: cannot configure a project against $BUILD/cmake (is MEMTRAIN_INSTALL on?)"
  exit 1
fi

failed=0
for i in $(seq 1 "$n"); do
  read -r md line <"$W/snippet_$i.where"
  if "$CMAKE" --build "$W/build" --target "snippet_$i" >"$W/build_$i.log" 2>&1; then
    echo "PASS $md:$line"
  else
    failed=$((failed + 1))
    echo "FAIL $md:$line"
    grep -E 'error|Error' "$W/build_$i.log" | grep -v '^ninja: build stopped' | head -20 \
      | sed 's/^/    /'
  fi
done
echo "$n snippets, $failed failed"
[ "$failed" -eq 0 ]
