"""A stand-in for the ssh client, for the test that ssh fetches are pinned (there is no sshd on
this machine to run a real one against).

Called as `ssh [options] [user@]host command`, as git calls ssh. It "connects" by running
`git upload-pack` on <roots>/<address>/<path>, where the address is the `-o HostName=` value
when given, and otherwise what the name resolves to at connection time, which the test sets
(--resolve name=address): that is the DNS answer real ssh would act on. Each connection is
appended to <roots>/connections as "name address".
"""

import os
import shlex
import sys

_WITH_VALUE = {"-o", "-p", "-i", "-F", "-l", "-J", "-b", "-c", "-m", "-E"}


def main(argv: list[str]) -> None:
    roots, answers, args = argv[0], dict(a.split("=", 1) for a in argv[1].split(",") if a), argv[2:]
    hostname, positional, i = "", [], 0
    while i < len(args):
        if args[i] in _WITH_VALUE:
            key, _, value = args[i + 1].partition("=")
            if args[i] == "-o" and key.lower() == "hostname":
                hostname = value
            i += 2
        elif args[i].startswith("-"):
            i += 1
        else:
            positional.append(args[i])
            i += 1
    name = positional[0].rpartition("@")[2]
    address = hostname or answers.get(name, "")
    with open(os.path.join(roots, "connections"), "a") as record:
        record.write(f"{name} {address}\n")
    path = shlex.split(positional[1])[-1]  # git-upload-pack '/team/app.git'
    os.execvp("git", ["git", "upload-pack", os.path.join(roots, address, path.lstrip("/"))])


if __name__ == "__main__":
    main(sys.argv[1:])
