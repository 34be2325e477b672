"""Bad input on the ``rafs`` command line: a one-line error naming what is wrong, never a traceback,
a hang, exit code 0, or a device node replaced by a regular file.

Most cases run ``rafs.cli.main.main`` in-process (an unexpected exception fails the test as it would
print a traceback); closed streams and pipes need a child process.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys

import pytest

from rafs.cli.main import main, one_line


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    """A small v6 image: (work dir, bootstrap, blob dir)."""
    base = tmp_path_factory.mktemp("cli-bad")
    src = base / "src"
    (src / "d").mkdir(parents=True)
    (src / "a").write_bytes(b"hello\n")
    (src / "d" / "b").write_bytes(os.urandom(5000))
    blobs = base / "blobs"
    blobs.mkdir()
    assert main(["create", str(src), "-B", str(base / "boot"), "-D", str(blobs)]) == 0
    (base / "empty").write_bytes(b"")
    (base / "adir").mkdir()
    return base


def run(capsys, image, argv, stdin=None):
    """(exit code, stderr) of ``rafs argv`` with ``{W}`` replaced by the work directory."""
    argv = [a.replace("{W}", str(image)) for a in argv]
    try:
        code = main(argv)
    except SystemExit as exc:            # argparse usage errors
        code = exc.code
    return code, capsys.readouterr().err


def config(image, name, document) -> str:
    path = image / name
    path.write_text(json.dumps(document))
    return str(path)


CASES = [
    # command line, exit code, words the one-line message must hold
    (["inspect", "{W}/missing"], 1, "No such file"),
    (["inspect", "/dev/zero"], 2, "character device"),
    (["inspect", "s3://"], 2, "names no bucket"),
    (["blob-info", "s3://"], 2, "names no bucket"),
    (["check", "{W}/boot", "-D", "{W}/missing"], 2, "--blob-dir {W}/missing: no such directory"),
    (["check", "{W}/boot", "-D", "{W}/empty"], 2, "--blob-dir {W}/empty: not a directory"),
    (["check", "{W}/boot", "-J", "{W}/nodir/out.json"], 2, "directory {W}/nodir does not exist"),
    (["unpack", "{W}/boot", "-D", "{W}/missing", "--output", "{W}/o.tar"], 2, "--blob-dir"),
    (["unpack", "{W}/boot", "-D", "{W}/blobs", "--output", "{W}/nodir/o.tar"], 2, "{W}/nodir does not exist"),
    (["unpack", "{W}/boot", "-D", "{W}/blobs", "--output", "{W}/adir"], 2, "--output {W}/adir: is a directory"),
    (["unpack", "{W}/boot", "-D", "{W}/blobs", "--output", "/proc/rafs-x.tar"], 2, "cannot create a file in /proc"),
    (["unpack", "{W}/boot", "-D", "{W}/blobs", "--output", "/dev/full"], 1, "No space left on device: '/dev/full'"),
    (["unpack", "{W}/boot", "-b", "{W}/adir", "--output", "{W}/o.tar"], 2, "--blob {W}/adir: is a directory"),
    (["create", "{W}/src", "-B", "{W}/nodir/boot", "-D", "{W}/blobs"], 2, "--bootstrap {W}/nodir/boot: directory"),
    (["create", "{W}/src", "-B", "{W}/adir", "-D", "{W}/blobs"], 2, "--bootstrap {W}/adir: is a directory"),
    (["create", "{W}/src", "-B", "{W}/new", "-b", "/dev/null"], 2, "--blob /dev/null: not a regular file"),
    (["create", "{W}/src", "-B", "{W}/new", "-D", "{W}/blobs", "--parent-bootstrap", "{W}/missing"], 2,
     "--parent-bootstrap {W}/missing: no such file"),
    (["merge", "{W}/adir", "-B", "{W}/merged"], 2, "SOURCE {W}/adir: is a directory"),
    (["merge", "{W}/boot", "-B", "{W}/nodir/merged"], 2, "directory {W}/nodir does not exist"),
    (["merge", "{W}/boot", "-B", "{W}/merged", "-C", "{W}/missing"], 2, "--config {W}/missing: no such file"),
    (["merge", "{W}/boot", "-B", "{W}/merged", "--chunk-dict", "bootstrap={W}/missing"], 2, "--chunk-dict"),
    (["build", "--name", "x", "--source-dir", "{W}/src", "--output-dir", "{W}/empty"], 2,
     "--output-dir {W}/empty: not a directory"),
    (["build", "--name", "x", "--source-dir", "{W}/src", "--output-dir", "{W}/out", "--backend-push",
      "--backend-config", '{"endpoint": 5, "bucket_name": "b"}'], 2, "endpoint must be a str"),
]


@pytest.mark.parametrize("argv, code, words", CASES, ids=[" ".join(c[0][:1] + c[0][2:4]) for c in CASES])
def test_bad_input_is_a_one_line_error(capsys, image, argv, code, words):
    got, err = run(capsys, image, argv)
    assert got == code, err
    assert words.replace("{W}", str(image)) in err
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err


MOUNT_CONFIGS = [
    ({"device": {"backend": {"type": "localfs", "config": {"dir": 5}}}}, "dir must be a str"),
    ({"device": {"backend": {"type": "s3", "config": {"endpoint": 5, "bucket_name": 7}}}}, "must be a str"),
    ({"device": {"backend": {"type": "localfs", "config": {"dir": "/tmp", "retry_limit": "x"}}}}, "retry_limit"),
    ({"device": {"backend": {"type": "localfs", "config": {"dir": "/tmp"}},
                 "cache": {"type": "blobcache", "config": {"work_dir": "/proc/rafs-no/cache"}}}},
     "cache work_dir /proc/rafs-no/cache"),
]


@pytest.mark.parametrize("document, words", MOUNT_CONFIGS, ids=["localfs-dir", "s3-types", "retry", "work-dir"])
def test_mount_refuses_a_bad_config_before_mounting(capsys, image, document, words):
    (image / "mnt").mkdir(exist_ok=True)
    got, err = run(capsys, image, ["mount", "-B", "{W}/boot", "-M", "{W}/mnt", "-C",
                                   config(image, "bad.json", document)])
    assert got == 2, err
    assert words in err and len(err.strip().splitlines()) == 1
    assert not os.path.ismount(image / "mnt")


def test_unpack_into_a_device_writes_into_it(capsys, image):
    got, err = run(capsys, image, ["unpack", "{W}/boot", "-D", "{W}/blobs", "--output", "/dev/null"])
    assert got == 0, err
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode)      # written into, not replaced by a regular file


def test_blob_info_of_no_metadata_prints_a_note(image):
    out = subprocess.run([sys.executable, "-m", "rafs", "blob-info", str(image / "empty")],
                         capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 0 and "no RAFS blob metadata" in out.stdout


def test_one_line_joins_a_multi_line_message():
    assert one_line(ValueError("Parameter validation failed:\n  Invalid bucket name \"\"\n")) == \
        'Parameter validation failed: Invalid bucket name ""'


def rafs_child(args, **kwargs):
    return subprocess.run([sys.executable, "-m", "rafs", *args], capture_output=True, timeout=60, check=False, **kwargs)


def test_a_bootstrap_read_from_a_pipe(image):
    out = rafs_child(["inspect", "--json", "/dev/stdin"], input=(image / "boot").read_bytes())
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["version"] == 6


@pytest.mark.parametrize("args", [
    ["create", "{W}/src", "-B", "{W}/p-boot", "-D", "{W}/blobs", "--prefetch-policy", "fs"],
    ["merge", "{W}/boot", "-B", "{W}/p-merged", "--prefetch-policy", "fs"],
], ids=["create", "merge"])
def test_prefetch_patterns_from_a_closed_stdin(image, args):
    out = rafs_child([a.replace("{W}", str(image)) for a in args], stdin=subprocess.DEVNULL,
                     preexec_fn=lambda: os.close(0))
    err = out.stderr.decode()
    assert out.returncode == 2 and "standard input, which is closed" in err and "Traceback" not in err


def test_unpack_to_a_closed_stdout(image):
    out = subprocess.run([sys.executable, "-m", "rafs", "unpack", str(image / "boot"), "-D", str(image / "blobs"),
                          "--output", "-"], check=False, stderr=subprocess.PIPE, timeout=60,
                         preexec_fn=lambda: os.close(1))
    err = out.stderr.decode()
    assert out.returncode == 2 and "standard output is closed" in err and "Traceback" not in err


def test_umount_of_a_path_that_is_not_utf8_is_one_line(tmp_path):
    target = os.path.join(os.fsencode(tmp_path), b"not-utf8-\xff")
    os.mkdir(target)
    out = subprocess.run([sys.executable, "-m", "rafs", "umount", target], capture_output=True, timeout=60)
    err = out.stderr.decode("utf-8", "replace")
    assert out.returncode == 1 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert "not-utf8-\\xff" in err


@pytest.mark.parametrize("extra", [["--json"], []])
def test_inspect_with_stdout_closed_is_one_line(v6_fixture, extra):
    bootstrap, _ = v6_fixture
    out = subprocess.run([sys.executable, "-m", "rafs", "inspect", str(bootstrap), *extra], stdout=None,
                         stderr=subprocess.PIPE, timeout=60, close_fds=True,
                         preexec_fn=lambda: os.close(1))
    err = out.stderr.decode()
    assert out.returncode == 1 and "Traceback" not in err and "standard output is closed" in err, err
