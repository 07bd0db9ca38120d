"""common.retries: Retry-After in both of its forms, the backoff and the retry budget."""

from __future__ import annotations

from email.utils import formatdate

from common import retries


def test_retry_after_reads_seconds_and_http_dates():
    now = 1_700_000_000.0
    assert retries.retry_after("7", now=now) == 7.0
    assert retries.retry_after(" 0 ", now=now) == 0.0
    assert retries.retry_after("-3", now=now) == 0.0
    assert retries.retry_after(formatdate(now + 42, usegmt=True), now=now) == 42.0
    assert retries.retry_after(formatdate(now - 42, usegmt=True), now=now) == 0.0  # already passed
    for unreadable in (None, "", "soon", "Wed, 99 Foo 2015"):
        assert retries.retry_after(unreadable, now=now) is None


def test_delay_is_the_servers_word_up_to_a_cap_else_the_backoff():
    assert [retries.backoff(n, base=1, cap=30) for n in (1, 2, 3, 6, 9)] == [1, 2, 4, 30, 30]
    assert retries.delay(3, base=1, cap=30, server_wait=0.5) == 0.5
    assert retries.delay(1, base=1, cap=30, server_wait=3600) == retries.RETRY_AFTER_CAP
    assert retries.delay(2, base=1, cap=30) == 2


def test_budget_counts_consecutive_failures_and_progress_starts_it_afresh():
    budget = retries.Budget(2, progress=100)
    assert budget.failed(0) and budget.failed(99)
    assert budget.failed(100) and budget.failures == 1  # this attempt got somewhere
    assert budget.failed(0) and not budget.failed(0)
    attempts = retries.Budget(0)
    assert not attempts.failed()
