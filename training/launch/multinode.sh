#!/usr/bin/env bash
# Launch `unimodal train` on several nodes with the DeepSpeed launcher.
#
# Run it on the first node of the hostfile. The launcher reaches every host by ssh (pdsh by
# default) and starts GPUS_PER_NODE processes there; each process is one rank, the collectives
# run over NCCL. Every run passes `--resume auto`, so running the same command again after a
# crash, a pre-emption or a time limit continues from the newest complete checkpoint in the run
# directory (a fresh directory starts from step 0).
#
# Needs on every node: the same checkout and Python environment (the same paths), and a shared
# filesystem for the run directory (every rank writes its shards of each checkpoint there) and
# for the data. Environment variables for the remote ranks (NCCL_*, HF_HOME, ...) go in a
# `.deepspeed_env` file (one VAR=value per line) in $HOME or in the checkout root (the launcher
# runs from there); DeepSpeed exports them on every node (NCCL_*, PYTHON* are passed anyway).
#
# Example (32 nodes x 8 GPUs = 256 ranks, the ImageNet recipes' world size):
#   training/launch/multinode.sh -H training/launch/hostfile -c imagenet256-acdit-xl \
#       -o /shared/runs/imagenet256-acdit-xl -- train.checkpoint_every=2000
set -euo pipefail

usage() {
    cat <<'EOF'
usage: training/launch/multinode.sh -c RECIPE -o RUN_DIR [-H HOSTFILE] [-n NODES] [-g GPUS_PER_NODE]
                                    [-m MASTER_ADDR] [-p MASTER_PORT] [-x DEEPSPEED_ARG ...] [--dry-run]
                                    [-- OVERRIDE ...]

  -c, --config RECIPE      recipe file, or a name in training/configs/ (e.g. imagenet256-acdit-xl)
  -o, --out RUN_DIR        run directory on a filesystem every node shares (checkpoints, model, logs)
  -H, --hostfile FILE      MPI-style hostfile, one "host slots=GPUS" per line
                           (default: $HOSTFILE, else training/launch/hostfile; see hostfile.example)
  -n, --nodes N            use the first N hosts of the hostfile (default: all)
  -g, --gpus-per-node G    processes per node (default: the hostfile's slots)
  -m, --master-addr ADDR   address of rank 0, reachable from every node (default: the first host)
  -p, --master-port PORT   rendezvous port on the master (default: $MASTER_PORT, else 29500)
  -x, --ds-arg ARG         one more argument for the deepspeed launcher (repeatable), e.g.
                           -x --launcher=slurm -x --no_ssh_check (srun instead of pdsh/ssh),
                           -x --no_ssh_check (one node, no ssh server), -x --ssh_port=2222
      --dry-run            print the deepspeed command and exit
  --  OVERRIDE ...         recipe overrides, dotted keys (e.g. data.batch_size=16 train.grad_accum=2)

The launch command is printed and also written to RUN_DIR/launch.log, with the resolved hosts.
EOF
}

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
PROG=multinode.sh
# shellcheck source=training/launch/common.sh
source "$HERE/common.sh"

config="" out="" hostfile="${HOSTFILE:-$HERE/hostfile}" nodes="" gpus="" master_addr="" master_port="${MASTER_PORT:-29500}"
dry_run=0
ds_args=()
overrides=()
while [[ $# -gt 0 ]]; do
    case "$1" in
        -c|--config) config="${2:?}"; shift 2 ;;
        -o|--out) out="${2:?}"; shift 2 ;;
        -H|--hostfile) hostfile="${2:?}"; shift 2 ;;
        -n|--nodes) nodes="${2:?}"; shift 2 ;;
        -g|--gpus-per-node) gpus="${2:?}"; shift 2 ;;
        -m|--master-addr) master_addr="${2:?}"; shift 2 ;;
        -p|--master-port) master_port="${2:?}"; shift 2 ;;
        -x|--ds-arg) ds_args+=("${2:?}"); shift 2 ;;
        --dry-run) dry_run=1; shift ;;
        -h|--help) usage; exit 0 ;;
        --) shift; overrides=("$@"); break ;;
        *=*) overrides+=("$1"); shift ;;
        *) die "unknown argument '$1'" ;;
    esac
done

[[ -n "$config" ]] || die "missing -c RECIPE"
[[ -n "$out" ]] || die "missing -o RUN_DIR (a directory on a filesystem every node shares)"
[[ -f "$hostfile" ]] || die "hostfile '$hostfile' not found (copy training/launch/hostfile.example)"
command -v deepspeed >/dev/null || die "the deepspeed launcher is not on PATH (pip install deepspeed)"
command -v unimodal >/dev/null || die "the unimodal command is not on PATH (pip install -e . in the checkout)"
for v in "$nodes" "$gpus" "$master_port"; do
    [[ -z "$v" || "$v" =~ ^[0-9]+$ ]] || die "-n, -g and -p take integers, got '$v'"
done

# Hosts from the hostfile (comments and blank lines skipped), the first N with -n.
mapfile -t hosts < <(sed -e 's/#.*//' -e '/^[[:space:]]*$/d' "$hostfile" | awk '{print $1}')
[[ ${#hosts[@]} -gt 0 ]] || die "hostfile '$hostfile' lists no hosts"
if [[ -n "$nodes" ]]; then
    [[ "$nodes" -le ${#hosts[@]} ]] || die "-n $nodes but the hostfile lists ${#hosts[@]} hosts"
    hosts=("${hosts[@]:0:$nodes}")
fi
master_addr="${master_addr:-${hosts[0]}}"
config="$(resolve_recipe "$config")"
out="$(resolve_out "$out")"

cmd=(deepspeed --hostfile "$hostfile" --master_addr "$master_addr" --master_port "$master_port")
[[ -n "$nodes" ]] && cmd+=(--num_nodes "$nodes")
[[ -n "$gpus" ]] && cmd+=(--num_gpus "$gpus")
cmd+=("${ds_args[@]}")
# `unimodal` is a console script, not a Python file: --no_python runs it as it is, and
# --no_local_rank leaves out the --local_rank argument (the rank comes from LOCAL_RANK).
cmd+=(--no_python --no_local_rank unimodal train --config "$config" --out "$out" --resume auto "${overrides[@]}")

log_launch "$out" "${#hosts[@]} node(s): ${hosts[*]}" "${cmd[@]}"
[[ "$dry_run" -eq 1 ]] && exit 0
cd "$ROOT"
exec "${cmd[@]}"
