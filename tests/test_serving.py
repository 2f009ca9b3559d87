"""What every whoexec server under gunicorn shares: its settings and the open-files limit."""

from __future__ import annotations

import resource
import shutil

from webhook.serving import configure, raise_open_files_limit


def test_every_server_turns_gunicorn_s_control_socket_off_and_keeps_its_own_settings():
    # gunicorn >= 25.1 opens a control socket under $HOME, which a read-only root
    # filesystem has no place for
    from gunicorn.config import Config

    cfg = Config()
    assert "control_socket_disable" in cfg.settings, "the gunicorn whoexec pins has it"
    configure(cfg, {"workers": 3, "timeout": 7})
    assert (cfg.control_socket_disable, cfg.workers, cfg.timeout) == (True, 3, 7)


def test_the_open_files_limit_is_raised_up_to_the_hard_limit_and_never_lowered():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    assert hard == resource.RLIM_INFINITY or hard >= 1024, "whoexec's servers need 1,024"
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))
        assert raise_open_files_limit(512) == 512
        assert resource.getrlimit(resource.RLIMIT_NOFILE) == (512, hard)
        assert raise_open_files_limit(300) == 512, "never lowered"
        if hard != resource.RLIM_INFINITY:
            assert raise_open_files_limit(hard + 1000) == hard, "at most the hard limit"
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_without_a_state_dir_the_metrics_dir_is_temporary_and_only_its_maker_removes_it(
    monkeypatch,
):
    """`whoexec serve` has no state dir: gunicorn's master makes one in /tmp, and removes
    it at its exit; a forked worker that exits first must leave it to the others."""
    import atexit
    import os

    from webhook import serving

    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", "")  # taken back after the test
    at_exit = []
    monkeypatch.setattr(atexit, "register", at_exit.append)
    directory = serving.prepare_metrics_dir(2)
    try:
        assert directory is not None and directory.is_dir()
        assert directory.name.startswith("whoexec-metrics-")
        assert os.environ["PROMETHEUS_MULTIPROC_DIR"] == str(directory)
        (remove,) = at_exit
        maker = os.getpid()
        monkeypatch.setattr(os, "getpid", lambda: maker + 1)  # as in a forked worker
        remove()
        assert directory.is_dir(), "a worker's exit leaves it"
        (directory / "counter_1.db").write_bytes(b"x")  # what the workers wrote
        monkeypatch.setattr(os, "getpid", lambda: maker)
        remove()
        assert not directory.exists(), "the maker's exit removes it, with what is in it"
    finally:
        shutil.rmtree(directory, ignore_errors=True)  # type: ignore[arg-type]
