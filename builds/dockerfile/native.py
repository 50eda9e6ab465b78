"""Compiled dependencies: build tools in the build stage, and in the run stage the Debian
packages holding the shared libraries the compiled modules load.

The build stage lists what its compiled modules (Python extension .so files, Node addons,
Ruby gem extensions) link against: `ldd` names each library, `dpkg -S` the package that ships
it. Libraries bundled inside a wheel or gem belong to no package and travel with it. The run
stage installs only the listed packages its slim image lacks, so a dependency with no system
library (or only libc's) costs no apt-get at all.
"""

from builds.dockerfile.writer import Dockerfile

LIST = "/tmp/hubfly-run-packages"


def apt_install(packages: list[str] | tuple[str, ...]) -> str:
    packages = " ".join(sorted(set(packages)))
    return (f"apt-get update && apt-get install -y --no-install-recommends {packages}"
            " && rm -rf /var/lib/apt/lists/*")


def apt_install_missing(packages: list[str] | tuple[str, ...]) -> str:
    """Installs the packages unless the image has them all (the full upstream images have most
    build packages already: no apt-get, no network)."""
    names = " ".join(sorted(set(packages)))
    return f"dpkg -s {names} >/dev/null 2>&1 || {{ {apt_install(packages)}; }}"


def record_libraries(df: Dockerfile, roots: str, pattern: str, known: list[str] | tuple[str, ...] = ()) -> None:
    """In the build stage: write LIST, the packages whose libraries the files named `pattern`
    under `roots` load, plus `known` ones (loaded with dlopen, where ldd cannot see them)."""
    echo = f"printf '%s\\n' {' '.join(sorted(set(known)))}; " if known else ""
    df.run(f"{{ {echo}find {roots} -type f -name '{pattern}' -exec ldd {{}} + 2>/dev/null"
           " | awk '$2 == \"=>\" && $3 ~ /^\\// {print $1}' | sort -u"
           " | while read -r lib; do dpkg -S \"*/$lib\" 2>/dev/null | head -n 1 | cut -d: -f1; done; }"
           f" | sort -u > {LIST}")


def install_libraries(df: Dockerfile) -> None:
    """In the run stage (as root): the packages of LIST the image does not have yet."""
    df.copy(LIST, LIST, from_stage="build")
    df.run(f"missing=''; for p in $(cat {LIST}); do dpkg -s \"$p\" >/dev/null 2>&1 || missing=\"$missing $p\"; done;"
           " if [ -n \"$missing\" ]; then apt-get update && apt-get install -y --no-install-recommends $missing"
           f" && rm -rf /var/lib/apt/lists/*; fi && rm -f {LIST}")
