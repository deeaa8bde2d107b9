#!/bin/sh
# hull's fuzz targets (cargo-fuzz, libFuzzer; the list is in README.md).
#
#   fuzz.sh check                   compiles every target (`make lint`)
#   fuzz.sh run SECONDS [TARGET...] seeds each target's corpus (seeds.py) and adds the inputs
#                                   of regressions/TARGET/ (committed: each once failed), builds,
#                                   and runs each target (default: all) for SECONDS (`make fuzz`,
#                                   and briefly in `make test`); fails if any target found a crash
#                                   (saved under artifacts/TARGET/)
#
# cargo-fuzz needs nightly-only rustc flags (-Zsanitizer, -Cpasses=sancov...): RUSTC_BOOTSTRAP=1
# lets the stable toolchain accept them. The target dir is HULL_FUZZ_TARGET_DIR (the Makefile
# keeps it outside the clone, next to the main one), else ./target.
set -eu
cd "$(dirname "$0")"
export RUSTC_BOOTSTRAP=1
export CARGO_TARGET_DIR="${HULL_FUZZ_TARGET_DIR:-$PWD/target}"
# cargo-fuzz sets RUSTFLAGS itself (sanitizer, coverage); the main build's static linking must
# not reach this build (RUSTFLAGS wins anyway, this keeps it explicit).
unset CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUSTFLAGS
TRIPLE=x86_64-unknown-linux-gnu
if ! cargo fuzz --version >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked
fi
ALL=$(cargo fuzz list)

case "${1:-}" in
check)
    exec cargo fuzz check --target "$TRIPLE"
    ;;
run)
    SECONDS_TO_RUN=${2:?usage: fuzz.sh run SECONDS [TARGET...]}
    shift 2
    TARGETS=${*:-$ALL}
    cargo fuzz build --target "$TRIPLE"
    failed=""
    for t in $TARGETS; do
        python3 seeds.py "$t" "corpus/$t"
        if [ -d "regressions/$t" ]; then
            cp regressions/"$t"/* "corpus/$t/"
        fi
        mkdir -p "artifacts/$t"
        case "$t" in
            virtio_fs*) max_len=65536 ;;
            vsock_tx | vsock_rx) max_len=32768 ;;
            virtio_net_tx) max_len=98304 ;;
            agent_*) max_len=65536 ;;
            *) max_len=4096 ;;
        esac
        bin="$CARGO_TARGET_DIR/$TRIPLE/release/$t"
        set -- "$bin" "corpus/$t" -artifact_prefix="artifacts/$t/" -max_total_time="$SECONDS_TO_RUN" \
            -max_len="$max_len" -rss_limit_mb=2048 -timeout=20 -print_final_stats=1
        echo "=== fuzzing $t for ${SECONDS_TO_RUN}s"
        rc=0
        case "$t" in
            virtio_fs*)
                # The target writes into a real shared directory: a private mount namespace with
                # a 64 MiB tmpfs as HULL_FS_FUZZ_DIR, so that no input can fill the host's disk,
                # and nothing is left behind.
                unshare -m --propagation private sh -c '
                    set -eu
                    dir=$(mktemp -d /tmp/hull-fs-fuzz.XXXXXX)
                    mount -t tmpfs -o size=64m hull-fs-fuzz "$dir"
                    rc=0
                    HULL_FS_FUZZ_DIR="$dir" "$@" || rc=$?
                    umount "$dir"; rmdir "$dir"
                    exit $rc
                ' sh "$@" || rc=$?
                ;;
            *) "$@" || rc=$? ;;
        esac
        if [ "$rc" -ne 0 ]; then
            echo "=== $t FAILED (exit $rc); see fuzz/artifacts/$t/"
            failed="$failed $t"
        fi
    done
    if [ -n "$failed" ]; then
        echo "fuzz targets that failed:$failed"
        exit 1
    fi
    echo "fuzz targets ran for ${SECONDS_TO_RUN}s each without a crash: $TARGETS" | tr '\n' ' '
    echo
    ;;
*)
    sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
    ;;
esac
