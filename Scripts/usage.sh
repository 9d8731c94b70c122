# Sourced by the pipeline scripts right after `set -euo pipefail`: `usage` prints the calling script's header
# comment (its usage) and exits 2 (or the code given); `-h` / `--help` as the first argument prints it and exits 0.
usage() { sed -n '2,/^[^#]/p' "$0" | grep '^#' | sed 's/^# \{0,1\}//'; exit "${1:-2}"; }
case "${1:-}" in -h|--help) usage 0 ;; esac
