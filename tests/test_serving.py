"""What every whoexec server under gunicorn shares: its settings and the open-files limit."""

from __future__ import annotations

import resource
import shutil

import pytest

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


class FakeLimits:
    """RLIMIT_NOFILE as a container may give it: an infinite hard limit, or a kernel that
    refuses to raise the soft one."""

    RLIMIT_NOFILE, RLIM_INFINITY = resource.RLIMIT_NOFILE, resource.RLIM_INFINITY

    def __init__(self, soft: int, hard: int, refuse: type[Exception] | None = None) -> None:
        self.limits, self.refuse, self.set = (soft, hard), refuse, 0

    def getrlimit(self, which: int) -> tuple[int, int]:
        assert which == resource.RLIMIT_NOFILE
        return self.limits

    def setrlimit(self, which: int, limits: tuple[int, int]) -> None:
        assert which == resource.RLIMIT_NOFILE
        self.set += 1
        if self.refuse is not None:
            raise self.refuse("not permitted")
        self.limits = limits


def test_under_an_infinite_hard_limit_the_soft_one_is_raised_to_what_is_wanted(monkeypatch):
    from webhook import serving

    fake = FakeLimits(1024, resource.RLIM_INFINITY)
    monkeypatch.setattr(serving, "resource", fake)
    assert raise_open_files_limit(65536) == 65536
    assert fake.limits == (65536, resource.RLIM_INFINITY), "not unlimited: what was asked"


@pytest.mark.parametrize("refused", [ValueError, OSError])
def test_a_limit_the_kernel_will_not_raise_is_the_limit_in_force_not_an_error(monkeypatch, refused):
    from webhook import serving

    fake = FakeLimits(1024, 4096, refused)
    monkeypatch.setattr(serving, "resource", fake)
    assert raise_open_files_limit(65536) == 1024
    assert fake.set == 1
