"""Exits 0 when the given objects are the same bytes once the ptxas command
line each cubin records (`-split-compile N`, one per chip) is set aside;
otherwise says where the first two differ and exits 1."""
import re
import sys

RECORDED = re.compile(rb"-split-compile [0-9]+ ")


def normalised(path, chips):
    data = open(path, "rb").read()
    found = len(RECORDED.findall(data))
    if found != chips:
        sys.exit(f"{path}: {found} recorded ptxas command lines, expected {chips}")
    return RECORDED.sub(b"-split-compile N ", data)


def main():
    chips, paths = int(sys.argv[1]), sys.argv[2:]
    first = normalised(paths[0], chips)
    for path in paths[1:]:
        other = normalised(path, chips)
        if other != first:
            at = next((i for i, (a, b) in enumerate(zip(first, other)) if a != b),
                      min(len(first), len(other)))
            sys.exit(f"{paths[0]} and {path} differ at byte {at} "
                     f"(sizes {len(first)} and {len(other)})")
    print(f"same: {len(paths)} objects")


main()
