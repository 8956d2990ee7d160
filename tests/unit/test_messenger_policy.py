"""Unit and property tests of client_sdk/messenger_policy.py: the settings, peers' version ordering
against a model that forgets nothing, and the seen window's promise that no taken message is ever
accepted as new again, whatever its limit forgets and however often it is saved and read back."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from client_sdk.messenger_policy import (
    Freshness,
    MessengerPolicy,
    PeerVersions,
    RefusedDeliveries,
    SeenWindow,
)
from relay.config import MailboxConfig

GRACE = 100.0


# -- the settings -----------------------------------------------------------------------------------


def test_the_defaults_follow_the_relays_mailbox_defaults():
    policy, mailbox = MessengerPolicy(), MailboxConfig()
    assert policy.message_ttl_seconds == mailbox.message_ttl_seconds == 30 * 24 * 3600
    assert policy.seen_limit == mailbox.max_messages == 10_000
    assert (policy.superseded_grace_seconds, policy.refused_deliveries) == (24 * 3600, 2)


@pytest.mark.parametrize("changes", [
    {"message_ttl_seconds": 0}, {"clock_skew_seconds": -1}, {"seen_limit": 0}, {"seen_limit": 1.5},
    {"refused_deliveries": 0}, {"superseded_grace_seconds": math.inf}, {"refusal_cache_seconds": True},
])
def test_settings_out_of_range_are_refused(changes):
    with pytest.raises(ValueError, match=next(iter(changes))):
        MessengerPolicy(**changes)


# -- peers' versions ---------------------------------------------------------------------------------


def model_verdict(sightings: dict[int, float], version: int, now: float) -> bool:
    """Whether a signature by `version` is accepted, from every first sighting ever made."""
    newer = [since for seen, since in sightings.items() if seen > version]
    return not newer or now - min(newer) < GRACE


def record(model: dict[int, float], version: int, now: float) -> None:
    model.setdefault(version, now)


# Each step: a version seen some seconds later, or a save-and-read-back some seconds later.
steps = st.lists(
    st.tuples(st.sampled_from(["see", "save"]), st.integers(1, 6), st.floats(0, 80)), max_size=25
)


def replay(steps_, check=None) -> tuple[PeerVersions, dict[int, float], float]:
    """Run `steps_` on a PeerVersions and on the model; `check(versions, model, now)` after each."""
    versions, model, now = PeerVersions(), {}, 0.0
    for action, version, later in steps_:
        now += later
        if action == "save":
            versions = PeerVersions.from_json(versions.to_json(now, GRACE))
        else:
            versions.observe("bob", version, now, GRACE)
            record(model, version, now)
        if check:
            check(versions, model, now)
    return versions, model, now


def agrees(versions: PeerVersions, model: dict[int, float], now: float) -> None:
    for version in range(1, 8):
        assert (versions.superseded("bob", version, now, GRACE) is None) == model_verdict(model, version, now)
    assert versions.newest("bob") == max(model, default=0)


@settings(max_examples=300, deadline=None)
@given(steps, st.floats(0, 300))
def test_peer_versions_answer_like_a_model_that_forgets_nothing(steps_, later):
    versions, model, now = replay(steps_, check=agrees)
    agrees(versions, model, now + later)


@settings(max_examples=200, deadline=None)
@given(steps, steps, st.floats(0, 300))
def test_merged_peer_versions_accept_only_what_both_accept(first, second, later):
    a, model_a, now_a = replay(first)
    b, model_b, now_b = replay(second)
    now = max(now_a, now_b) + later
    union = {v: min(t for m in (model_a, model_b) for w, t in m.items() if w == v) for v in {*model_a, *model_b}}
    verdicts = {v: [x.superseded("bob", v, now, GRACE) is None for x in (a, b)] for v in range(1, 8)}
    a.merge(b)
    for version in range(1, 8):
        accepted = a.superseded("bob", version, now, GRACE) is None
        assert accepted == all(verdicts[version]) == model_verdict(union, version, now)


def test_a_lower_version_never_replaces_the_newest_and_peers_are_separate():
    versions = PeerVersions()
    assert versions.observe("bob", 3, 0.0, GRACE) and not versions.observe("bob", 2, 1.0, GRACE)
    assert versions.newest("bob") == 3 and versions.newest("carol") == 0
    assert versions.superseded("carol", 1, 10_000.0, GRACE) is None
    refused = versions.superseded("bob", 1, 10_000.0, GRACE)
    assert refused is not None and refused.version == 3


def test_the_peer_limit_forgets_the_least_recently_raised_peer():
    versions = PeerVersions(limit=2)
    for n, peer in enumerate(("bob", "carol", "dave")):
        versions.observe(peer, 1, float(n), GRACE)
    assert [versions.newest(p) for p in ("bob", "carol", "dave")] == [0, 1, 1]


@pytest.mark.parametrize("bad", [[], {"bob": {"newest": 0, "floor": 0, "raised": []}}, {"bob": {"newest": 1}}])
def test_peer_versions_refuse_what_they_did_not_write(bad):
    with pytest.raises((ValueError, KeyError, TypeError)):
        PeerVersions.from_json(bad)


# -- the seen window ----------------------------------------------------------------------------------

TTL, SKEW = 1000.0, 10.0

# Each step: take a message (sender, id, send time relative to now, relay id), let time pass, or
# save and read back, with the messenger's rule: only what `check` calls NEW is taken.
window_steps = st.lists(
    st.one_of(
        st.tuples(st.just("take"), st.sampled_from("abc"), st.integers(0, 30), st.floats(-TTL - 3 * SKEW, 3 * SKEW),
                  st.sampled_from(["r1", "r2"])),
        st.tuples(st.just("wait"), st.floats(0, TTL / 3)),
        st.tuples(st.just("save")),
    ),
    max_size=60,
)


@settings(max_examples=400, deadline=None)
@given(window_steps, st.integers(1, 6))
def test_no_taken_message_is_ever_new_again(steps_, limit):
    window, now, taken, superseded = SeenWindow(TTL, SKEW, limit), 10_000.0, [], []
    for step in steps_:
        if step[0] == "wait":
            now += step[1]
        elif step[0] == "save":
            window = SeenWindow.from_json(window.to_json(now), now, TTL, SKEW, limit)
        else:
            _, sender, number, offset, relay_id = step
            message_id, sent = f"m-{number}", now + offset
            if window.check(sender, message_id, sent, relay_id, now) is Freshness.NEW:
                window.add(sender, message_id, sent, relay_id, now)
                # A sender that reuses its own message id (with another send time, after the first
                # was forgotten) makes the window hold the newer one: the older reads as a replay.
                superseded += [t for t in taken if t[:2] == (sender, message_id)]
                taken = [t for t in taken if t[:2] != (sender, message_id)] + [(sender, message_id, sent, relay_id)]
        assert len(window) <= limit
        for sender, message_id, sent, relay_id in superseded:
            assert window.check(sender, message_id, sent, relay_id, now) is not Freshness.NEW
        for sender, message_id, sent, relay_id in taken:
            again = window.check(sender, message_id, sent, relay_id, now)
            assert again in (Freshness.REDELIVERED, Freshness.EXPIRED, Freshness.FORGOTTEN)
            other = window.check(sender, message_id, sent, relay_id + "-replayed", now)
            assert other in (Freshness.REPLAYED, Freshness.EXPIRED, Freshness.FORGOTTEN)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from("abc"), st.floats(-TTL, SKEW)), max_size=30))
def test_within_its_limit_the_window_forgets_nothing_early(messages):
    now = 50_000.0
    window = SeenWindow(TTL, SKEW, limit=len(messages) + 1)
    for number, (sender, offset) in enumerate(messages):
        window.add(sender, f"m-{number}", now + offset, "r", now)
    for number, (sender, offset) in enumerate(messages):
        assert window.check(sender, f"m-{number}", now + offset, "r", now) is Freshness.REDELIVERED
    for sender in "abc":  # and nothing blocks what is new
        assert window.check(sender, "fresh", now - TTL / 2, "r", now) is Freshness.NEW


def test_the_window_edges():
    window, now = SeenWindow(TTL, SKEW, 10), 10_000.0
    assert window.check("a", "m", now + SKEW + 1, "r", now) is Freshness.FUTURE
    assert window.check("a", "m", now + SKEW, "r", now) is Freshness.NEW
    assert window.check("a", "m", now - TTL - SKEW - 1, "r", now) is Freshness.EXPIRED
    assert window.check("a", "m", now - TTL - SKEW, "r", now) is Freshness.NEW
    window.add("a", "m", now, "r", now)
    assert window.check("a", "m", now, "r", now + TTL) is Freshness.REDELIVERED
    assert window.check("a", "m", now, "r", now + TTL + SKEW + 1) is Freshness.EXPIRED
    window.add("b", "n", now + TTL + SKEW + 1, "r", now + TTL + SKEW + 1)  # the first one expires
    assert len(window) == 1


def test_a_forgotten_message_raises_only_its_senders_horizon():
    window, now = SeenWindow(TTL, SKEW, 2), 10_000.0
    window.add("alice", "m-1", now - 30, "r", now)
    window.add("carol", "m-2", now - 20, "r", now)
    window.add("carol", "m-3", now - 10, "r", now)  # alice's m-1, the oldest, is forgotten
    assert window.check("alice", "m-1", now - 30, "r", now) is Freshness.FORGOTTEN
    assert window.check("alice", "m-0", now - 40, "r", now) is Freshness.FORGOTTEN
    assert window.check("alice", "m-4", now - 29, "r", now) is Freshness.NEW
    assert window.check("bob", "m-5", now - 40, "r", now) is Freshness.NEW  # other senders: unaffected


def test_pairs_of_an_earlier_sdk_are_kept_a_whole_ttl_and_drop_repeats_quietly():
    now = 10_000.0
    window = SeenWindow.from_pairs([["alice", "m-1"], ["bob", "m-2"]], now, TTL, SKEW, 10)
    assert window.check("alice", "m-1", now - TTL, "any relay id", now) is Freshness.REDELIVERED
    assert window.check("bob", "m-2", now, "r", now + TTL) is Freshness.REDELIVERED
    assert window.check("alice", "m-3", now, "r", now) is Freshness.NEW


# -- refused deliveries ----------------------------------------------------------------------------------


def test_refused_deliveries_count_per_message_within_a_limit_and_round_trip():
    refused = RefusedDeliveries(limit=2)
    assert [refused.count("r1", 0.0), refused.count("r1", 1.0), refused.count("r2", 2.0)] == [1, 2, 1]
    refused.count("r3", 3.0)  # over the limit: r1, counted first, goes
    assert len(refused) == 2 and refused.count("r1", 4.0) == 1
    again = RefusedDeliveries.from_json(refused.to_json(now=5.0, ttl=TTL), limit=2)
    assert again.count("r1", 6.0) == 2 and again.forget("r1") and not again.forget("r1")
    assert RefusedDeliveries.from_json(again.to_json(now=TTL + 10, ttl=TTL), limit=2).to_json(TTL + 10, TTL) == []
