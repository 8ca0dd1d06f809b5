#!/usr/bin/env python3
"""Checks the include graph against the project's floors (docs/DESIGN.md "Layout").

Each folder of src/ (and its mirror in include/longctx/) may include only folders on a lower
floor; folders on one floor never include each other. The CLI (tools/) includes only the public
headers and the bench drivers; a bench driver that includes library internals says so in its
first line. Prints every violation and exits 1 if there is any. Run from anywhere.
"""
import pathlib
import re
import sys

FLOORS = [
    ["core"],
    ["attention"],  # attention/common.hpp: the vocabulary every kind shares
    ["attention/engine"],
    ["attention/dense"],
    ["attention/moba", "attention/sparse", "attention/nsa", "attention/infini"],
    ["attention/kind"],  # the kinds and their options, over the kernels above
    ["attention/cache"],
    ["nn"],
    ["moe"],
    ["model"],
    ["text"],
    ["train", "eval"],
]
FLOOR = {name: i for i, names in enumerate(FLOORS) for name in names}
ROOT = pathlib.Path(__file__).resolve().parent.parent
INCLUDE = re.compile(r'^\s*#\s*include\s+([<"])([^>"]+)[>"]', re.M)


def folder(rel):
    """Library folder of a path relative to src/ or include/longctx/."""
    parts = rel.split("/")
    if parts[0] == "attention" and len(parts) > 2:
        return "attention/" + parts[1]
    return parts[0] if len(parts) > 1 else None


def target(kind, name):
    if kind == "<" and name.startswith("longctx/"):
        return folder(name[len("longctx/"):]), True
    if kind == '"' and (ROOT / "src" / name).exists():
        return folder(name), False
    return None, None


def main():
    errors = []
    for base, prefix in ((ROOT / "src", ""), (ROOT / "include" / "longctx", "")):
        for path in sorted(base.rglob("*.[ch]pp")):
            here = folder(str(path.relative_to(base)))
            if here not in FLOOR:
                errors.append(f"{path.relative_to(ROOT)}: folder '{here}' is on no floor")
                continue
            for kind, name in INCLUDE.findall(path.read_text()):
                there, _ = target(kind, name)
                if there is None or there == here:
                    continue
                if there not in FLOOR:
                    errors.append(f"{path.relative_to(ROOT)}: includes {name} from unknown folder '{there}'")
                elif FLOOR[there] >= FLOOR[here]:
                    errors.append(f"{path.relative_to(ROOT)} ({here}, floor {FLOOR[here]}) includes {name} "
                                  f"({there}, floor {FLOOR[there]}): not a lower floor")
    for path in sorted((ROOT / "tools").glob("*.[ch]pp")):
        for kind, name in INCLUDE.findall(path.read_text()):
            there, public = target(kind, name)
            if there is not None and not public:
                errors.append(f"{path.relative_to(ROOT)}: the CLI includes library internal {name}")
    for path in sorted((ROOT / "bench").glob("*.[ch]pp")):
        text = path.read_text()
        internal = [n for k, n in INCLUDE.findall(text) if target(k, n) == (folder(n), False) and folder(n)]
        if internal and "internal" not in text.splitlines()[0]:
            errors.append(f"{path.relative_to(ROOT)}: includes internals ({', '.join(internal)}) but its first "
                          "line does not say it times internals")
    for e in errors:
        print(e)
    print(f"layering: {len(errors)} violation(s)")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
