#!/usr/bin/env bash
# Build a corpus of real photographs for imgproc's benchmarks and tests.
#
#   scripts/build-corpus.sh [OUT_DIR]      (default: bench/corpus)
#
# Sources, all from package registries:
#   - Debian packages mate-backgrounds, plasma-workspace-wallpapers,
#     lomiri-wallpapers-16.04 and lomiri-wallpapers-20.04, fetched with
#     `apt-get download` and unpacked with `dpkg -x` (nothing is installed);
#   - the scikit-image wheel from PyPI (photographs in skimage/data/);
#   - three files derived from those: a JPEG with EXIF Orientation=6, a
#     photographic WebP and a PNG with an alpha channel.
# Only photographs are taken. The packages' illustrations, abstract
# wallpapers, screenshots and SVG/XML files are skipped. gnome-backgrounds is
# not used: in Debian 12 it ships only rendered illustrations.
#
# Downloads are cached in $CORPUS_CACHE (default: bench/.work/corpus-cache).
# Once the cache is filled, the script runs offline. It is idempotent: a
# re-run only adds what is missing or has changed. It installs the Debian
# tools it needs (exiftool, cwebp, ImageMagick, unzip) when they are missing.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="${1:-$ROOT/bench/corpus}"
CACHE="${CORPUS_CACHE:-$ROOT/bench/.work/corpus-cache}"
SKIMAGE_VERSION="${SKIMAGE_VERSION:-0.26.0}"

START=$SECONDS
log() { printf '[corpus] %s\n' "$*" >&2; }
die() { printf '[corpus] error: %s\n' "$*" >&2; exit 1; }

SUDO=()
if [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null 2>&1; then SUDO=(sudo); fi

APT_UPDATED=0
apt_update() {
  if [ "$APT_UPDATED" -eq 0 ]; then
    log "apt-get update"
    "${SUDO[@]}" apt-get update -qq
    APT_UPDATED=1
  fi
}

apt_install() {
  log "installing: $*"
  if ! DEBIAN_FRONTEND=noninteractive "${SUDO[@]}" apt-get install -y -qq --no-install-recommends "$@" >/dev/null; then
    apt_update
    DEBIAN_FRONTEND=noninteractive "${SUDO[@]}" apt-get install -y -qq --no-install-recommends "$@" >/dev/null
  fi
}

# --- tools --------------------------------------------------------------------
ensure_tools() {
  local missing=()
  command -v exiftool >/dev/null 2>&1 || missing+=(libimage-exiftool-perl)
  command -v cwebp >/dev/null 2>&1 || missing+=(webp)
  { command -v identify >/dev/null 2>&1 && command -v convert >/dev/null 2>&1; } || missing+=(imagemagick)
  command -v unzip >/dev/null 2>&1 || missing+=(unzip)
  if [ "${#missing[@]}" -gt 0 ]; then apt_install "${missing[@]}"; fi
  command -v dpkg >/dev/null 2>&1 || die "dpkg is required (a Debian-based system)"
}

pip_cmd() {
  if python3 -m pip --version >/dev/null 2>&1; then
    echo "python3 -m pip"
  elif command -v pip3 >/dev/null 2>&1; then
    echo "pip3"
  else
    apt_install python3-pip
    echo "python3 -m pip"
  fi
}

# --- fetching and unpacking (cached) -----------------------------------------
fetch_deb() { # PKG -> prints the path of the cached .deb
  local pkg=$1 dir="$CACHE/deb" found tmp
  mkdir -p "$dir"
  found=$(find "$dir" -maxdepth 1 -name "${pkg}_*.deb" | sort | tail -n 1)
  if [ -z "$found" ]; then
    log "downloading Debian package $pkg"
    tmp=$(mktemp -d "$dir/.dl.XXXXXX")
    local opts=()
    [ "$(id -u)" -eq 0 ] && opts=(-o APT::Sandbox::User=root)
    if ! (cd "$tmp" && apt-get "${opts[@]}" -qq download "$pkg" >/dev/null 2>&1); then
      apt_update
      (cd "$tmp" && apt-get "${opts[@]}" -qq download "$pkg" >/dev/null) || { rm -rf "$tmp"; die "cannot download $pkg"; }
    fi
    mv "$tmp"/"${pkg}"_*.deb "$dir"/
    rm -rf "$tmp"
    found=$(find "$dir" -maxdepth 1 -name "${pkg}_*.deb" | sort | tail -n 1)
  fi
  printf '%s\n' "$found"
}

unpack_deb() { # PKG -> prints the unpacked root
  local pkg=$1 deb root stamp
  deb=$(fetch_deb "$pkg")
  root="$CACHE/root/$pkg"
  stamp="$root/.unpacked-from"
  if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$(basename "$deb")" ]; then
    rm -rf "$root"
    mkdir -p "$root"
    dpkg -x "$deb" "$root"
    basename "$deb" >"$stamp"
  fi
  printf '%s\n' "$root"
}

fetch_wheel() { # prints the path of the cached scikit-image wheel
  local dir="$CACHE/wheel" found tmp pip
  mkdir -p "$dir"
  found=$(find "$dir" -maxdepth 1 -name "scikit_image-${SKIMAGE_VERSION}-*.whl" | sort | tail -n 1)
  if [ -z "$found" ]; then
    log "downloading scikit-image $SKIMAGE_VERSION wheel"
    pip=$(pip_cmd)
    tmp=$(mktemp -d "$dir/.dl.XXXXXX")
    # Any wheel of this version carries the same data files; asking for one
    # fixed platform makes the download independent of the local Python.
    if ! $pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --abi cp312 --platform manylinux_2_28_x86_64 -d "$tmp" "scikit-image==$SKIMAGE_VERSION" >/dev/null 2>&1; then
      $pip download -q --no-deps -d "$tmp" "scikit-image==$SKIMAGE_VERSION" >/dev/null \
        || { rm -rf "$tmp"; die "cannot download scikit-image $SKIMAGE_VERSION"; }
    fi
    mv "$tmp"/scikit_image-*.whl "$dir"/
    rm -rf "$tmp"
    found=$(find "$dir" -maxdepth 1 -name "scikit_image-${SKIMAGE_VERSION}-*.whl" | sort | tail -n 1)
  fi
  printf '%s\n' "$found"
}

unpack_wheel() { # prints the unpacked root
  local whl root stamp
  whl=$(fetch_wheel)
  root="$CACHE/root/scikit-image"
  stamp="$root/.unpacked-from"
  if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$(basename "$whl")" ]; then
    rm -rf "$root"
    mkdir -p "$root"
    unzip -q -o "$whl" 'skimage/data/*' -d "$root"
    basename "$whl" >"$stamp"
  fi
  printf '%s\n' "$root"
}

# --- placing files in the corpus ---------------------------------------------
NAMES=()
MISSING=0
SOURCES_TMP=$(mktemp)
trap 'rm -f "$SOURCES_TMP"' EXIT

record() { # NAME ORIGIN DESCRIPTION
  NAMES+=("$1")
  printf '%s\t%s\t%s\n' "$1" "$2" "$3" >>"$SOURCES_TMP"
}

put() { # SRC NAME ORIGIN: copy one packaged file into the corpus, byte for byte
  local src=$1 name=$2 origin=$3
  if [ ! -f "$src" ]; then
    log "warning: not found, skipped: $src"
    MISSING=$((MISSING + 1))
    return 0
  fi
  if ! cmp -s "$src" "$OUT/$name"; then
    cp -L "$src" "$OUT/.$name.tmp"
    mv -f "$OUT/.$name.tmp" "$OUT/$name"
  fi
  record "$name" "$origin" "unchanged"
}

largest_in() { # DIR: the largest regular (non-symlink) image in DIR
  find "$1" -maxdepth 1 -type f \( -name '*.jpg' -o -name '*.jpeg' -o -name '*.png' \) -printf '%s\t%p\n' 2>/dev/null \
    | sort -k1,1nr -k2 | head -n 1 | cut -f2-
}

derive() { # NAME ORIGIN DESCRIPTION CMD...: make a derived file unless it exists
  local name=$1 origin=$2 desc=$3
  shift 3
  if [ ! -s "$OUT/$name" ]; then
    local tmp="$OUT/.tmp.$name"
    rm -f "$tmp"
    "$@" "$tmp"
    mv -f "$tmp" "$OUT/$name"
  fi
  record "$name" "$origin" "$desc"
}

mk_exif6() { # SRC OUT: pixels turned 90° counter-clockwise, tagged "rotate 90° CW"
  convert "$1" -rotate -90 -quality 92 -sampling-factor 2x2,1x1,1x1 "JPG:$2"
  exiftool -q -overwrite_original -n -Orientation=6 "$2"
}

mk_webp() { # SRC OUT
  local png
  png=$(mktemp --suffix=.png)
  convert "$1" -strip "PNG24:$png"
  cwebp -quiet -q 80 -metadata none "$png" -o "$2"
  rm -f "$png"
}

mk_alpha_png() { # SRC OUT: soft elliptical vignette in the alpha channel
  local w h
  w=$(identify -ping -format '%w' "$1")
  h=$(identify -ping -format '%h' "$1")
  convert "$1" -strip \
    \( -size "${w}x${w}" radial-gradient:white-black -resize "${w}x${h}!" -level 0%,55% \) \
    -alpha off -compose CopyOpacity -composite \
    -define png:color-type=6 -define png:exclude-chunks=date,time "PNG32:$2"
}

# --- main ---------------------------------------------------------------------
ensure_tools
mkdir -p "$OUT" "$CACHE"

MATE=$(unpack_deb mate-backgrounds)
PLASMA=$(unpack_deb plasma-workspace-wallpapers)
LOMIRI16=$(unpack_deb lomiri-wallpapers-16.04)
LOMIRI20=$(unpack_deb lomiri-wallpapers-20.04)
SKIMAGE=$(unpack_wheel)

ver() { cut -d_ -f2 <"$1/.unpacked-from" | sed 's/%3[aA]/:/g'; }
V_MATE="mate-backgrounds $(ver "$MATE")"
V_PLASMA="plasma-workspace-wallpapers $(ver "$PLASMA")"
V_LOMIRI16="lomiri-wallpapers-16.04 $(ver "$LOMIRI16")"
V_LOMIRI20="lomiri-wallpapers-20.04 $(ver "$LOMIRI20")"
V_SKIMAGE="scikit-image $SKIMAGE_VERSION"

# KDE Plasma wallpapers that are photographs (the largest size of each).
for w in BytheWater ColdRipple ColorfulCups DarkestHour EveningGlow FallenLeaf Grey Kite summer_1am; do
  dir="$PLASMA/usr/share/wallpapers/$w/contents/images"
  src=$(largest_in "$dir")
  slug=$(printf '%s' "$w" | tr '[:upper:]_' '[:lower:]-')
  put "${src:-$dir/missing}" "plasma-$slug.${src##*.}" "$V_PLASMA: ${src#"$PLASMA"/}"
done

# MATE "nature" photographs.
for f in Aqua Blinds Dune FreshFlower GreenMeadow LadyBird Storm Wood; do
  src="$MATE/usr/share/backgrounds/mate/nature/$f.jpg"
  slug=$(printf '%s' "$f" | tr '[:upper:]' '[:lower:]')
  put "$src" "mate-$slug.jpg" "$V_MATE: ${src#"$MATE"/}"
done

# Lomiri photographs (the abstract and digital-art wallpapers are left out).
for f in Bridge_by_Sander_Klootwijk Dragonfly_by_Bolly free_by_Peter_Nerlich friends_by_Aitzol_Berasategi \
    picosdeeuropa_by_Aitzol_Berasategi Picture_0B_by_freespace seeding_by_Clements_Engelhardt \
    sunset_by_Aitzol_Berasategi Wine_by_Jakkub_Mede; do
  src="$LOMIRI16/usr/share/backgrounds/$f.jpg"
  slug=$(printf '%s' "${f%%_by_*}" | tr '[:upper:]_' '[:lower:]-')
  put "$src" "lomiri-$slug.jpg" "$V_LOMIRI16: ${src#"$LOMIRI16"/}"
done
src="$LOMIRI20/usr/share/backgrounds/Kleiber_by_Lukas_Baubkus.jpg"
put "$src" "lomiri-kleiber.jpg" "$V_LOMIRI20: ${src#"$LOMIRI20"/}"

# scikit-image sample photographs (rocket.jpg carries an Adobe RGB profile).
for f in astronaut.png coffee.png chelsea.png motorcycle_left.png rocket.jpg; do
  src="$SKIMAGE/skimage/data/$f"
  slug=$(printf '%s' "${f%.*}" | tr '[:upper:]_' '[:lower:]-')
  put "$src" "skimage-$slug.${f##*.}" "$V_SKIMAGE: skimage/data/$f"
done

# Derived files.
src="$MATE/usr/share/backgrounds/mate/nature/TwoWings.jpg"
if [ -f "$src" ]; then
  derive "derived-twowings-exif6.jpg" "$V_MATE: ${src#"$MATE"/}" \
    "pixels rotated 90° counter-clockwise, JPEG q92 4:2:0, EXIF Orientation=6 (displays upright)" \
    mk_exif6 "$src"
else log "warning: not found, skipped: $src"; MISSING=$((MISSING + 1)); fi

src="$LOMIRI16/usr/share/backgrounds/aitzgorri_by_Aitzol_Berasategi.jpg"
if [ -f "$src" ]; then
  derive "derived-aitzgorri.webp" "$V_LOMIRI16: ${src#"$LOMIRI16"/}" "lossy WebP q80, metadata removed" \
    mk_webp "$src"
else log "warning: not found, skipped: $src"; MISSING=$((MISSING + 1)); fi

src="$MATE/usr/share/backgrounds/mate/nature/RainDrops.jpg"
if [ -f "$src" ]; then
  derive "derived-raindrops-alpha.png" "$V_MATE: ${src#"$MATE"/}" \
    "RGBA PNG, soft elliptical vignette in the alpha channel" mk_alpha_png "$src"
else log "warning: not found, skipped: $src"; MISSING=$((MISSING + 1)); fi

[ "${#NAMES[@]}" -gt 0 ] || die "no files were placed in $OUT"

# Remove files an earlier version of this script made that are no longer in the corpus.
for f in "$OUT"/plasma-* "$OUT"/mate-* "$OUT"/lomiri-* "$OUT"/skimage-* "$OUT"/derived-*; do
  [ -e "$f" ] || continue
  keep=0
  for n in "${NAMES[@]}"; do [ "$(basename "$f")" = "$n" ] && { keep=1; break; }; done
  if [ "$keep" -eq 0 ]; then log "removing stale $(basename "$f")"; rm -f "$f"; fi
done

{
  printf 'file\tsource\tchanges\n'
  sort "$SOURCES_TMP"
} >"$OUT/SOURCES.tsv"

# --- summary ------------------------------------------------------------------
bytes=0
declare -A by_format=()
for n in "${NAMES[@]}"; do
  bytes=$((bytes + $(stat -c %s "$OUT/$n")))
  ext=${n##*.}
  by_format[$ext]=$(( ${by_format[$ext]:-0} + 1 ))
done
formats=""
for ext in $(printf '%s\n' "${!by_format[@]}" | sort); do formats+="${formats:+, }${by_format[$ext]} $ext"; done

mp="n/a"
if command -v identify >/dev/null 2>&1; then
  mp=$(for n in "${NAMES[@]}"; do identify -ping -format '%w %h\n' "$OUT/${n}[0]" 2>/dev/null; done \
    | awk '{ s += $1 * $2 } END { printf "%.1f", s / 1e6 }')
fi

printf '\nCorpus: %s\n' "$OUT"
printf '  files:       %d (%s)\n' "${#NAMES[@]}" "$formats"
printf '  total size:  %s MB\n' "$(awk -v b="$bytes" 'BEGIN { printf "%.1f", b / 1e6 }')"
printf '  megapixels:  %s\n' "$mp"
[ "$MISSING" -eq 0 ] || printf '  missing:     %d source file(s), see warnings above\n' "$MISSING"
printf '  sources:     %s\n' "$OUT/SOURCES.tsv"
printf '  time:        %ds\n' "$((SECONDS - START))"
