# Sourced by scripts/setup.sh and tests/setup.sh: installs the Debian
# packages given that are not installed yet.
#
# Twice at most: installing one package can remove another as a conflict
# (a machine that came with bookworm-backports' qemu-utils 10.0 loses it
# when QEMU 7.2's qemu-system-common goes in), so what is missing after the
# first pass is installed from this Debian's own suite. A package that
# still cannot be installed fails by name.
install_packages() {
    local packages=("$@") missing=() pass p
    for pass in 1 2 3; do
        missing=()
        for p in "${packages[@]}"; do
            dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
        done
        [ ${#missing[@]} -eq 0 ] && return 0
        if [ "$pass" = 3 ]; then
            echo "these Debian packages could not be installed together: ${missing[*]}" >&2
            return 1
        fi
        printf '\n== installing Debian packages (pass %s): %s\n' "$pass" "${missing[*]}"
        export DEBIAN_FRONTEND=noninteractive
        [ "$pass" = 1 ] && apt-get update -qq
        apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    done
}
