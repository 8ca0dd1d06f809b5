#!/usr/bin/env bash
# Plots of `longctx eval --json` results (gnuplot and jq, installed by scripts/setup.sh; this script
# never installs anything: `longctx eval --plot` runs it in the middle of an evaluation).
#   scripts/plot_eval.sh OUT.png EVAL.json
#       position-wise loss curve, the passkey accuracy grid (length x depth) and one RULER grid per
#       task (`longctx eval --ruler`) of one eval, three panels to a row
#   scripts/plot_eval.sh --positions OUT.png A.json B.json ...
#       the position-wise loss curves of several evals in one plot, labelled by file name
set -euo pipefail

usage() { echo "usage: $0 OUT.png EVAL.json | $0 --positions OUT.png A.json [B.json ...]" >&2; exit 2; }
[ $# -ge 2 ] || usage
mode=single
if [ "$1" = "--positions" ]; then mode=positions; shift; [ $# -ge 2 ] || usage; fi
out=$1; shift
for f in "$@"; do [ -r "$f" ] || { echo "plot_eval: cannot read $f" >&2; exit 1; }; done
for tool in gnuplot jq; do
  command -v $tool > /dev/null || { echo "plot_eval: $tool is not installed (scripts/setup.sh installs it)" >&2; exit 1; }
done

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# position-wise loss of one eval JSON as "mid_position loss" lines
positions() { jq -r '.rows[] | "\((.begin + .end) / 2) \(.loss)"' "$1"; }

loss_plot() {  # gnuplot commands plotting the curves of the given files
  local cmds="" i=0
  for f in "$@"; do
    positions "$f" > "$tmp/pos$i.dat"
    local label; label=$(basename "$f" .json)
    cmds+="${cmds:+, }'$tmp/pos$i.dat' using 1:2 with linespoints title '$label'"
    i=$((i + 1))
  done
  cat <<EOF
set title 'Position-wise validation loss'
set xlabel 'position in the window (bucket middle)'
set ylabel 'loss (nats/token)'
set key top right
set grid
plot $cmds
EOF
}

grid_plot() {  # gnuplot commands drawing one accuracy grid (length x depth): section passkey, or one task of ruler
  local f=$1 section=$2 task=$3
  jq -r --arg s "$section" --arg t "$task" '.[$s] as $p | $p.cells[] | select($t == "" or .task == $t) | . as $c |
         "\([$p.depths[]] | map(. == $c.depth) | index(true)) \([$p.lengths[]] | map(. == $c.length) | index(true)) \(.accuracy)"' \
     "$f" > "$tmp/grid_$section$task.dat"
  local xt yt nx ny title
  xt=$(jq -r --arg s "$section" '[.[$s].depths | to_entries[] | "\"\(.value)\" \(.key)"] | join(", ")' "$f")
  # lengths, with the multiples they were given as ("2x (1024)") where the section has them
  yt=$(jq -r --arg s "$section" '.[$s] as $p | [$p.lengths | to_entries[] |
         "\"\(if $p.length_names then "\($p.length_names[.key]) (\(.value))" else .value end)\" \(.key)"] | join(", ")' "$f")
  nx=$(jq --arg s "$section" '.[$s].depths | length' "$f")
  ny=$(jq --arg s "$section" '.[$s].lengths | length' "$f")
  title=$([ -n "$task" ] && echo "RULER $task" || echo "Passkey")
  cat <<EOF
set title sprintf('$title accuracy (%d trials per cell)', $(jq --arg s "$section" '.[$s].trials' "$f"))
set xlabel 'needle depth'
set ylabel 'context length (tokens)'
set xtics ($xt)
set ytics ($yt)
set xrange [-0.5:$nx - 0.5]
set yrange [-0.5:$ny - 0.5]
set cbrange [0:1]
set palette defined (0 '#b2182b', 0.5 '#f7f7f7', 1 '#2166ac')
unset grid
unset key
plot '$tmp/grid_$section$task.dat' using 1:2:3 with image, '' using 1:2:(sprintf('%.2f', \$3)) with labels
EOF
}

if [ "$mode" = positions ]; then
  for f in "$@"; do
    [ "$(jq '.rows | length' "$f")" -gt 0 ] || { echo "plot_eval: $f has no position-wise loss (eval ran with --no-loss)" >&2; exit 1; }
  done
  { echo "set terminal pngcairo size 900,600 noenhanced"; echo "set output '$out'"; loss_plot "$@"; } > "$tmp/plot.gp"
else
  [ $# -eq 1 ] || usage
  f=$1
  has_loss=$(jq '.rows | length > 0' "$f")
  has_passkey=$(jq '.passkey != null and (.passkey.cells | length) > 0' "$f")
  ruler_tasks=$(jq -r '.ruler // {} | .tasks // [] | .[]' "$f")
  {
    n=$(echo "$ruler_tasks" | grep -c . || true)
    [ "$has_loss" = true ] && n=$((n + 1)); [ "$has_passkey" = true ] && n=$((n + 1))
    [ $n -gt 0 ] || { echo "plot_eval: $f holds neither a position-wise loss nor a retrieval grid" >&2; exit 1; }
    cols=$((n < 3 ? n : 3)); rows=$(((n + 2) / 3))
    echo "set terminal pngcairo size $((700 * cols)),$((560 * rows)) noenhanced"
    echo "set output '$out'"
    echo "set multiplot layout $rows,$cols title '$(basename "$f")'"
    if [ "$has_loss" = true ]; then
      trained=$(jq '.summary.model.trained_max_seq_len // 0' "$f")
      last=$(jq '.rows[-1].end' "$f")
      if [ "$trained" -gt 0 ] && [ "$trained" -lt "$last" ]; then  # mark where extrapolation begins
        echo "set arrow 1 from $trained, graph 0 to $trained, graph 1 nohead dashtype 2 lc rgb 'gray40'"
        echo "set label 1 'training length' at $trained, graph 0.95 offset 0.5,0 tc rgb 'gray40'"
      fi
      loss_plot "$f"
      echo "unset arrow 1; unset label 1"
    fi
    [ "$has_passkey" = true ] && grid_plot "$f" passkey ""
    for task in $ruler_tasks; do grid_plot "$f" ruler "$task"; done
    echo "unset multiplot"
  } > "$tmp/plot.gp"
fi
gnuplot "$tmp/plot.gp"
echo "plot_eval: wrote $out" >&2
