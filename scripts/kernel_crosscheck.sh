#!/usr/bin/env bash
# Check that the C kernel computes the same bytes on aarch64 (the Kunpeng hosts of the reference deployment)
# as on this x86-64 machine, where the tests check it against the torch path bit for bit.
# Needs Debian's gcc-aarch64-linux-gnu and qemu-user: apt-get install gcc-aarch64-linux-gnu qemu-user
# Usage: bash scripts/kernel_crosscheck.sh [extra CFLAGS for the aarch64 build]
set -euo pipefail
cd "$(dirname "$0")"
flags=(-O3 -ffp-contract=off -Wall)  # as setup.py builds it
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
gcc "${flags[@]}" kernel_crosscheck.c -o "$tmp/native"
aarch64-linux-gnu-gcc "${flags[@]}" "$@" kernel_crosscheck.c -o "$tmp/aarch64"
"$tmp/native" > "$tmp/native.txt"
qemu-aarch64 -L /usr/aarch64-linux-gnu "$tmp/aarch64" > "$tmp/aarch64.txt"
cases=$(wc -l < "$tmp/native.txt")
if diff -q "$tmp/native.txt" "$tmp/aarch64.txt" > /dev/null; then
    echo "aarch64 == $(uname -m): all $cases cases give the same bytes"
else
    echo "aarch64 != $(uname -m): $(diff "$tmp/native.txt" "$tmp/aarch64.txt" | grep -c '^<') of $cases cases differ"
    exit 1
fi
