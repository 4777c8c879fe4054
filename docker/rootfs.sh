#!/usr/bin/env bash
# Lays out the files one module image adds on top of its base image (distroless static: no
# shared libraries, a `nonroot` user 65532, CA certificates, /tmp). Used by the Dockerfiles'
# build stage AND by docker/assemble.sh, so the tree a test runs is made by the same steps.
#
#   docker/rootfs.sh --module NAME --binary FILE --pkgroot DIR --triple GNU_TRIPLE --out DIR \
#                    [--ort-lib FILE] [--ort-extra DIR] [--model FILE] [--history-model FILE]
#
# --pkgroot   the target's Debian runtime packages (libc6, libgcc-s1, libstdc++6) unpacked
#             (`dpkg-deb -x`) into one folder: the shared libraries come only from there.
# --triple    the multiarch triple of the target: x86_64-linux-gnu, aarch64-linux-gnu,
#             arm-linux-gnueabihf.
# --ort-extra the GPU image's libraries for the classifier, put beside libonnxruntime.so in
#             /app: ONNX Runtime's CUDA provider and the CUDA and cuDNN runtime libraries of
#             NVIDIA's wheels (the classifier loads them from there). libcuda.so.1, which they
#             need, is the NVIDIA driver's: the host gives it to the container, never the image.
#
# Writes OUT/rootfs (owned by root in the image) and OUT/owned (owned by the module user in
# the image: the writer's empty /avrofiles). Exits non-zero, saying which, when a library the
# module needs (also through dlopen'ed ONNX Runtime) is not in the packages.
set -euo pipefail

module="" binary="" pkgroot="" triple="" out="" ort_lib="" ort_extra="" model="" history_model=""
while [ $# -gt 0 ]; do
    case "$1" in
        --module) module="$2"; shift 2 ;;
        --binary) binary="$2"; shift 2 ;;
        --pkgroot) pkgroot="$2"; shift 2 ;;
        --triple) triple="$2"; shift 2 ;;
        --out) out="$2"; shift 2 ;;
        --ort-lib) ort_lib="$2"; shift 2 ;;
        --ort-extra) ort_extra="$2"; shift 2 ;;
        --model) model="$2"; shift 2 ;;
        --history-model) history_model="$2"; shift 2 ;;
        *) echo "rootfs.sh: unknown argument $1" >&2; exit 64 ;;
    esac
done
fail() { echo "rootfs.sh: $*" >&2; exit 1; }
[ -n "$module" ] && [ -n "$binary" ] && [ -n "$pkgroot" ] && [ -n "$triple" ] && [ -n "$out" ] ||
    fail "--module, --binary, --pkgroot, --triple and --out are required"
[ -f "$binary" ] || fail "no binary at $binary"
case "$module" in
    turbofanRulClassifier)
        [ -n "$ort_lib" ] && [ -f "$ort_lib" ] ||
            fail "the classifier needs --ort-lib (libonnxruntime.so from the onnxruntime wheel); got '${ort_lib}'"
        [ -n "$model" ] && [ -f "$model" ] || fail "the classifier needs --model (models/rul.onnx); got '${model}'"
        [ -n "${history_model}" ] && [ -f "$history_model" ] ||
            fail "the classifier needs --history-model (models/rul_history.onnx); got '${history_model}'"
        ;;
    *) # no files beyond the binary, for a module of this project
        [ -f "$(dirname "${BASH_SOURCE[0]}")/../modules/$module/module.json" ] || fail "unknown module '$module'"
        ;;
esac

rootfs="$out/rootfs"
rm -rf "$out"
mkdir -p "$rootfs/app" "$rootfs/usr/lib/$triple" "$out/owned"

# The program, named as the module, and /app/module for the image's ENTRYPOINT (a symlink:
# the classifier resolves its own path and looks for its model and ONNX Runtime beside it).
install -m 0755 "$binary" "$rootfs/app/$module"
ln -s "$module" "$rootfs/app/module"
elves=("$rootfs/app/$module")
if [ "$module" = turbofanRulClassifier ]; then
    install -m 0644 "$model" "$rootfs/app/rul.onnx"
    install -m 0644 "$history_model" "$rootfs/app/rul_history.onnx"
    install -m 0755 "$ort_lib" "$rootfs/app/libonnxruntime.so"
    elves+=("$rootfs/app/libonnxruntime.so")
    if [ -n "$ort_extra" ]; then
        [ -d "$ort_extra" ] || fail "--ort-extra $ort_extra is not a folder"
        for f in "$ort_extra"/*.so*; do
            install -m 0755 "$f" "$rootfs/app/$(basename "$f")"
            elves+=("$rootfs/app/$(basename "$f")")
        done
    fi
fi
if [ "$module" = avroFileWriter ]; then
    mkdir -p "$out/owned/avrofiles"
fi

needed() { readelf -d "$1" | sed -n 's/.*(NEEDED).*\[\(.*\)\]$/\1/p'; }
interpreter() { readelf -l "$1" | sed -n 's/.*Requesting program interpreter: \(.*\)\]$/\1/p'; }
find_lib() {
    local d
    for d in "$pkgroot/lib/$triple" "$pkgroot/usr/lib/$triple" "$pkgroot/lib" "$pkgroot/usr/lib"; do
        if [ -e "$d/$1" ]; then
            echo "$d/$1"
            return 0
        fi
    done
    return 1
}

# The shared-library closure of the program (and of ONNX Runtime, which it dlopens), from the
# target's Debian packages, into /usr/lib/<triple> (a default search directory of Debian's
# loader; the image has no ld.so.cache).
declare -A have=()
queue=("${elves[@]}")
while [ "${#queue[@]}" -gt 0 ]; do
    f="${queue[0]}"
    queue=("${queue[@]:1}")
    while read -r soname; do
        [ -n "$soname" ] || continue
        [ -z "${have[$soname]:-}" ] || continue
        [ "$soname" != libonnxruntime.so.1 ] || continue # the classifier dlopens /app/libonnxruntime.so
        [ ! -e "$rootfs/app/$soname" ] || continue       # the GPU image's CUDA libraries, in /app
        [ "$soname" != libcuda.so.1 ] || continue        # the NVIDIA driver's, from the host
        src="$(find_lib "$soname")" ||
            fail "$(basename "$f") needs $soname, which the packages in $pkgroot do not have"
        cp -L "$src" "$rootfs/usr/lib/$triple/$soname"
        chmod 0755 "$rootfs/usr/lib/$triple/$soname"
        have[$soname]=1
        queue+=("$rootfs/usr/lib/$triple/$soname")
    done < <(needed "$f")
done

# The program interpreter, at the absolute path the binary names (an absolute symlink, so it
# resolves inside the image whether or not the base image has a merged /usr).
interp="$(interpreter "$rootfs/app/$module")"
[ -n "$interp" ] || fail "$binary names no program interpreter (not a dynamically linked executable?)"
base="$(basename "$interp")"
if [ -z "${have[$base]:-}" ]; then
    src="$(find_lib "$base")" || fail "the program interpreter $base is not in $pkgroot"
    cp -L "$src" "$rootfs/usr/lib/$triple/$base"
    chmod 0755 "$rootfs/usr/lib/$triple/$base"
fi
if [ "$interp" != "/usr/lib/$triple/$base" ]; then
    mkdir -p "$rootfs$(dirname "$interp")"
    ln -sf "/usr/lib/$triple/$base" "$rootfs$interp"
fi

echo "rootfs.sh: $module: $(find "$rootfs" -type f | wc -l) files in $rootfs" >&2
