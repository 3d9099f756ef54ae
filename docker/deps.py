"""Print the third-party dependencies of the given pyproject.toml files, one per line, for a
cached dependency layer in the Dockerfiles: the pyproject files stay the one list.

    python deps.py packages/core/pyproject.toml[:train] services/serve/pyproject.toml

``:EXTRA`` adds that optional-dependency group. The project's own packages (eir-core) and torch
(installed before, pinned to a CPU or CUDA build) are left out.
"""

from __future__ import annotations

import re
import sys
import tomllib

SKIP = {"eir-core", "eir-serve", "torch"}


def main(args: list[str]) -> None:
    for arg in args:
        path, _, extra = arg.partition(":")
        with open(path, "rb") as f:
            project = tomllib.load(f)["project"]
        deps = list(project.get("dependencies", []))
        if extra:
            deps += project["optional-dependencies"][extra]
        for dep in deps:
            name = re.split(r"[\s<>=!~\[;]", dep, maxsplit=1)[0].lower()
            if name not in SKIP:
                print(dep)


if __name__ == "__main__":
    main(sys.argv[1:])
