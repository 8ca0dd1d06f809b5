#!/usr/bin/env bash
# Turns corpora shipped as Debian packages into longctx corpus folders (data/<name>/{train,val}/*.txt,
# one document per file; data/ is git-ignored), and optionally trains a SentencePiece BPE model on
# the training split.
#   scripts/prepare_data.sh kjv [--spm VOCAB]     King James Bible (bible-kjv): one long book;
#                                                 train = Genesis..Romans, val = 1 Corinthians..Revelation
#   scripts/prepare_data.sh linux [--spm VOCAB]   Linux 6.1 sources (linux-source-6.1), the core subsystems
#                                                 (kernel mm lib block ipc init crypto security, 36 MB): one
#                                                 document per directory, its .c/.h/Kconfig/Makefile files
#                                                 concatenated (long documents with long-range structure);
#                                                 split by directory: 1 in 20 (by a hash of its path) is val
set -euo pipefail
cd "$(dirname "$0")/.."
name=${1:?usage: scripts/prepare_data.sh kjv|linux [--spm VOCAB]}
shift
spm_vocab=0
while (($#)); do
  case $1 in
    --spm) spm_vocab=${2:?--spm needs a vocabulary size}; shift 2 ;;
    *) echo "prepare_data: unknown option $1" >&2; exit 2 ;;
  esac
done

source scripts/apt_need.sh

out=data/$name
case $name in
  kjv)
    need bible-kjv bible-kjv-text
    mkdir -p "$out/train" "$out/val"
    # `bible` prints "Book N" headings and numbered verses; keep them (they are the corpus's style).
    bible "Gen1:1-Rom16:27" < /dev/null > "$out/train/kjv_genesis_romans.txt"
    bible "1Co1:1-Rev22:21" < /dev/null > "$out/val/kjv_1corinthians_revelation.txt"
    ;;
  linux)
    need linux-source-6.1 xz-utils
    dirs=(kernel mm lib block ipc init crypto security)
    tmp=$(mktemp -d)
    trap 'rm -rf "$tmp"' EXIT
    tar -xJf /usr/src/linux-source-6.1.tar.xz -C "$tmp" "${dirs[@]/#/linux-source-6.1/}"
    rm -rf "$out" && mkdir -p "$out/train" "$out/val"
    (cd "$tmp/linux-source-6.1" && find "${dirs[@]}" -type d | LC_ALL=C sort) | while read -r dir; do
      files=$(cd "$tmp/linux-source-6.1" && find "$dir" -maxdepth 1 -type f \( -name '*.[ch]' -o -name Kconfig -o -name Makefile \) | LC_ALL=C sort)
      [ -n "$files" ] || continue
      hash=$(printf '%s' "$dir" | md5sum | cut -c1-8)
      split=train; (( 16#$hash % 20 == 0 )) && split=val
      doc="$out/$split/${dir//\//_}.txt"
      for f in $files; do printf '// ===== %s =====\n' "$f"; cat "$tmp/linux-source-6.1/$f"; done > "$doc"
    done
    echo "linux: $(ls "$out/train" | wc -l) train and $(ls "$out/val" | wc -l) val documents"
    ;;
  *) echo "prepare_data: unknown corpus '$name' (available: kjv, linux)" >&2; exit 2 ;;
esac

if ((spm_vocab > 0)); then
  need sentencepiece
  cat "$out"/train/*.txt > "$out/spm_input.tmp"
  spm_train --input="$out/spm_input.tmp" --model_prefix="$out/spm_bpe_$spm_vocab" --vocab_size="$spm_vocab" \
    --model_type=bpe --character_coverage=1.0 --byte_fallback=true --split_digits=true \
    --max_sentence_length=100000 --minloglevel=1 > /dev/null
  rm -f "$out/spm_input.tmp"
  echo "tokenizer: spm:$out/spm_bpe_$spm_vocab.model"
fi
du -sh "$out"/train "$out"/val
