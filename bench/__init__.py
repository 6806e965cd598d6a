"""Benchmarks of storefs, run as `python -m bench` (side by side with its peers) and `python -m bench.NAME`.

    __main__.py  the side-by-side run: CLI, setup, the JSON and the chart
    systems.py   storefs, rclone, JuiceFS, s3fs, the raw folder, and the floor / overlay references
    workloads.py the workloads (sequential, random, small files, tar, frozen) and the rounds
    frozen.py    SeaweedFS frozen (SIGSTOP) while programs work on cached files and folders
    report.py    medians, ratios to the best peer and the raw folder, table, chart
    floor.py     storefs' FUSE edge on an in-memory core (`python -m bench.floor MNT`)
    rss.py       the daemon's peak RSS through a 2 GiB S3 round trip (`python -m bench.rss`)
    scale.py     a 100,000-key folder and a 1 GiB cold read beside rclone (`python -m bench.scale`)
    common.py    progress lines, commands, sizes, polling, processes' memory

Servers and mounts come from storefs.testing, which the tests use too. latest.json and
latest.png are the last full run the README quotes.
"""
