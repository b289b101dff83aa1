# Shared by multinode.sh and torchrun.sh (sourced, not run): errors, recipe and run-directory
# resolution, and the launch log. Expects PROG (the script's name) and ROOT (the checkout) set.

die() { echo "$PROG: $*" >&2; echo "(run with --help for usage)" >&2; exit 2; }

# resolve_recipe NAME|PATH: a bare name resolves to training/configs/NAME.yaml in the checkout (the
# same path on every node); prints the path, or dies when it does not exist.
resolve_recipe() {
    local config="$1"
    if [[ "$config" != */* && "$config" != *.yaml && "$config" != *.yml ]]; then
        config="$ROOT/training/configs/$config.yaml"
    fi
    [[ -f "$config" ]] || die "recipe '$config' not found"
    echo "$config"
}

# resolve_out DIR: creates the run directory and prints its absolute path (every rank resolves
# the same one).
resolve_out() {
    mkdir -p "$1" && cd "$1" && pwd
}

# log_launch OUT HEADER CMD...: prints the header and the quoted command, and appends both to
# OUT/launch.log.
log_launch() {
    local out="$1" header="$2"
    shift 2
    {
        echo "# $(date -u +%Y-%m-%dT%H:%M:%SZ) on $(hostname): $header"
        printf '%q ' "$@"
        echo
    } | tee -a "$out/launch.log"
}
