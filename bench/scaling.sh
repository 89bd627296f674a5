#!/usr/bin/env bash
# The issue-9 scaling table on a many-core machine, offline: fmrecall vs libffm per epoch for FFM k=4,
# FFM k=8 and FM k=16 (fmrecall only) at 1, 2, 4, 8 and 16 threads, same data, same run, written into
# bench/results.md ("## Speed vs libffm"), then bench/hot_copies.py's table of the hot-parameter copies
# against Hogwild at the same thread counts (stdout). Needs: the built extension (python/fmrecall/_core*.so), g++
# with OpenMP, the libffm source (FMRECALL_LIBFFM_SRC, default ../shared/anchors/libffm). The data
# (bench/synth.py, FMRECALL_BENCH_ROWS rows, default 1,000,000) is generated on the first run.
#
#   bash bench/scaling.sh                  # threads 1,2,4,8,16
#   FMRECALL_BENCH_THREADS=1,4,16 bash bench/scaling.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="python${PYTHONPATH:+:$PYTHONPATH}"
export FMRECALL_BENCH_THREADS="${FMRECALL_BENCH_THREADS:-1,2,4,8,16}"
export OMP_PROC_BIND="${OMP_PROC_BIND:-close}" OMP_PLACES="${OMP_PLACES:-cores}"
echo "cores: $(nproc); threads: $FMRECALL_BENCH_THREADS; rows: ${FMRECALL_BENCH_ROWS:-1000000}" >&2
python3 bench/synth.py >/dev/null
python3 -m pytest bench/test_libffm.py --benchmark-only -q -p no:cacheprovider "$@"
# the threads' private copies of the hot parameters against Hogwild (markdown table on stdout)
python3 bench/hot_copies.py
