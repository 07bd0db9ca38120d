"""Print the requirements of pyproject.toml's core dependencies and the named extras, one a line.

    python3 pyproject_deps.py pyproject.toml [--core] [--extra NAME ...] [--exclude NAME ...]

Used inside the image builds to install dependencies before the source is copied, so a
source change does not invalidate the dependency layers. Standard library only (tomllib).
"""

import argparse
import re

import tomllib


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("pyproject")
    parser.add_argument("--extra", dest="extras", action="append", default=[], help="include this extra")
    parser.add_argument("--core", action="store_true", help="include [project] dependencies")
    parser.add_argument("--exclude", action="append", default=[], help="drop this distribution")
    args = parser.parse_args()
    with open(args.pyproject, "rb") as f:
        project = tomllib.load(f)["project"]
    reqs = list(project["dependencies"]) if args.core else []
    optional = project.get("optional-dependencies", {})
    for extra in args.extras:
        if extra not in optional:
            raise SystemExit(f"pyproject has no extra '{extra}' (has: {', '.join(sorted(optional))})")
        reqs += optional[extra]
    excluded = {name.lower() for name in args.exclude}
    seen = set()
    for req in reqs:
        name = re.split(r"[\s<>=!~\[;]", req, maxsplit=1)[0].lower()
        if name in excluded or req in seen:
            continue
        seen.add(req)
        print(req)


if __name__ == "__main__":
    main()
