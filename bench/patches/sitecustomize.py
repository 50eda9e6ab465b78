"""Experiment only (bench/run.py --patch-vfork): starts the commands that
builds/services/process.py runs through `setpriv --pdeathsig KILL --` instead of a
`preexec_fn`, so CPython can use vfork instead of fork. Loaded by every Python process of the
instance through PYTHONPATH; does nothing unless HUBFLY_BENCH_VFORK=1."""

import os

if os.environ.get("HUBFLY_BENCH_VFORK") == "1":
    import shutil
    import subprocess

    _SETPRIV = shutil.which("setpriv")
    _Popen = subprocess.Popen

    class _VforkPopen(_Popen):
        def __init__(self, args, *rest, preexec_fn=None, **kwargs):
            if (_SETPRIV and isinstance(args, list) and preexec_fn is not None
                    and getattr(preexec_fn, "__name__", "") == "_die_with_parent"):
                args, preexec_fn = [_SETPRIV, "--pdeathsig", "KILL", "--", *args], None
            super().__init__(args, *rest, preexec_fn=preexec_fn, **kwargs)

    subprocess.Popen = _VforkPopen
