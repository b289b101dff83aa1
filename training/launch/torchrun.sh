#!/usr/bin/env bash
# Launch `unimodal train` with torchrun: run this script once on EVERY node (torchrun does not
# reach other hosts itself), e.g. from a batch scheduler's per-node step (`srun` under SLURM) or
# by hand. All nodes meet at MASTER_ADDR:MASTER_PORT; node 0 hosts the rendezvous. Every run
# passes `--resume auto`, so submitting the same job again continues from the newest complete
# checkpoint in the run directory (a fresh directory starts from step 0).
#
# Needs on every node: the same checkout and Python environment, and a shared filesystem for the
# run directory and the data. Under SLURM the node count, node rank and master address are read
# from SLURM_NNODES, SLURM_NODEID and the first host of SLURM_JOB_NODELIST when not given.
#
# Example (on each of 12 nodes, 8 GPUs each = 96 ranks, the UCF-101 recipes' world size):
#   NODE_RANK=<0..11> training/launch/torchrun.sh -N 12 -g 8 -m node001 \
#       -c ucf101-acdit-xl -o /shared/runs/ucf101-acdit-xl
# Under SLURM:  srun --nodes 12 --ntasks-per-node 1 training/launch/torchrun.sh -g 8 -c ... -o ...
# On one machine (CPU test, 2 processes over gloo):  training/launch/torchrun.sh -g 2 -c NAME -o DIR
set -euo pipefail

usage() {
    cat <<'EOF'
usage: training/launch/torchrun.sh -c RECIPE -o RUN_DIR [-N NODES] [-r NODE_RANK] [-g PROCS_PER_NODE]
                                   [-m MASTER_ADDR] [-p MASTER_PORT] [--dry-run] [-- OVERRIDE ...]

  -c, --config RECIPE      recipe file, or a name in training/configs/ (e.g. ucf101-acdit-xl)
  -o, --out RUN_DIR        run directory on a filesystem every node shares
  -N, --nodes N            number of nodes (default: $NNODES, $SLURM_NNODES, else 1)
  -r, --node-rank R        this node's rank, 0..N-1 (default: $NODE_RANK, $SLURM_NODEID, else 0)
  -g, --gpus-per-node G    processes on this node (default: $GPUS_PER_NODE, else the visible GPUs,
                           else 1; on a CPU-only machine, processes over gloo)
  -m, --master-addr ADDR   address of node 0, reachable from every node
                           (default: $MASTER_ADDR, the first host of $SLURM_JOB_NODELIST, else 127.0.0.1)
  -p, --master-port PORT   rendezvous port on node 0 (default: $MASTER_PORT, else 29500)
      --dry-run            print the torchrun command and exit
  --  OVERRIDE ...         recipe overrides, dotted keys (e.g. data.batch_size=2 train.grad_accum=3)
EOF
}

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
PROG=torchrun.sh
# shellcheck source=training/launch/common.sh
source "$HERE/common.sh"

first_slurm_host() {
    [[ -n "${SLURM_JOB_NODELIST:-}" ]] && command -v scontrol >/dev/null || return 0
    scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1
}

config="" out=""
nodes="${NNODES:-${SLURM_NNODES:-1}}"
node_rank="${NODE_RANK:-${SLURM_NODEID:-0}}"
gpus="${GPUS_PER_NODE:-}"
master_addr="${MASTER_ADDR:-}"
master_port="${MASTER_PORT:-29500}"
dry_run=0
overrides=()
while [[ $# -gt 0 ]]; do
    case "$1" in
        -c|--config) config="${2:?}"; shift 2 ;;
        -o|--out) out="${2:?}"; shift 2 ;;
        -N|--nodes) nodes="${2:?}"; shift 2 ;;
        -r|--node-rank) node_rank="${2:?}"; shift 2 ;;
        -g|--gpus-per-node) gpus="${2:?}"; shift 2 ;;
        -m|--master-addr) master_addr="${2:?}"; shift 2 ;;
        -p|--master-port) master_port="${2:?}"; shift 2 ;;
        --dry-run) dry_run=1; shift ;;
        -h|--help) usage; exit 0 ;;
        --) shift; overrides=("$@"); break ;;
        *=*) overrides+=("$1"); shift ;;
        *) die "unknown argument '$1'" ;;
    esac
done

[[ -n "$config" ]] || die "missing -c RECIPE"
[[ -n "$out" ]] || die "missing -o RUN_DIR (a directory on a filesystem every node shares)"
command -v torchrun >/dev/null || die "torchrun is not on PATH (it comes with PyTorch)"
command -v unimodal >/dev/null || die "the unimodal command is not on PATH (pip install -e . in the checkout)"
if [[ -z "$gpus" ]]; then
    gpus="$(python -c 'import torch; print(torch.cuda.device_count() or 1)' 2>/dev/null || echo 1)"
fi
for v in "$nodes" "$node_rank" "$gpus" "$master_port"; do
    [[ "$v" =~ ^[0-9]+$ ]] || die "-N, -r, -g and -p take integers, got '$v'"
done
[[ "$node_rank" -lt "$nodes" ]] || die "node rank $node_rank is not below the node count $nodes"
master_addr="${master_addr:-$(first_slurm_host)}"
master_addr="${master_addr:-127.0.0.1}"
if [[ "$nodes" -gt 1 && ( "$master_addr" == 127.* || "$master_addr" == localhost ) ]]; then
    die "$nodes nodes need -m MASTER_ADDR, an address of node 0 that every node reaches"
fi
config="$(resolve_recipe "$config")"
out="$(resolve_out "$out")"

# Static rendezvous: node 0 listens on MASTER_ADDR:MASTER_PORT, the others connect. `unimodal`
# is a console script, so --no-python runs it as it is; torchrun passes the ranks in the
# environment (RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT).
cmd=(torchrun --nnodes "$nodes" --node-rank "$node_rank" --nproc-per-node "$gpus"
     --master-addr "$master_addr" --master-port "$master_port" --no-python
     unimodal train --config "$config" --out "$out" --resume auto "${overrides[@]}")

log_launch "$out" "node $node_rank of $nodes, $gpus process(es)" "${cmd[@]}"
[[ "$dry_run" -eq 1 ]] && exit 0
cd "$ROOT"
exec "${cmd[@]}"
