"""Support code shared by the tests and the benchmarks (as numpy.testing is): real mounts, servers, data.

    mount.py     StorefsMount (a real mount driven through the CLI), run, clean_env, FUSE checks
    pair.py      two mounts of one bucket (two hosts), a gate that cuts one off, the no-lost-update check
    backends.py  what a local folder or a bucket holds, read behind storefs' back
    data.py      payloads, trees of files, errno checks through the kernel
    seaweed.py   a throwaway SeaweedFS S3 server (start, stop, SIGSTOP/SIGCONT)
    moto.py      an in-process moto S3 server
    users.py     file operations run as another uid (setpriv)
    nginx.py     nginx serving a mount
    fsx.py       a random file exerciser checked against a model (python -m storefs.testing.fsx)

Nothing in storefs outside this package imports it (scripts/check_layers.py checks that).
pytest fixtures stay in tests/conftest.py.
"""
