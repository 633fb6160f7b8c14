"""Merge patches that clear what the new status no longer has."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from distillery.api.merge_patch import apply_merge_patch, merge_patch

leaves = st.one_of(st.integers(), st.text(max_size=3), st.lists(st.integers(), max_size=3))
docs = st.recursive(
    st.dictionaries(st.sampled_from("abcd"), leaves, max_size=4),
    lambda inner: st.dictionaries(st.sampled_from("abcd"), st.one_of(leaves, inner), max_size=4),
    max_leaves=12,
)


def test_a_key_the_new_status_lacks_is_sent_as_null() -> None:
    old = {"rollout": {"phase": "Progressing", "step": 1, "stepStartedAt": "T1"}}
    new = {"rollout": {"phase": "Progressing", "step": 2}}
    assert merge_patch(old, new) == {"rollout": {"step": 2, "stepStartedAt": None}}


@given(docs, docs)
def test_applying_the_patch_gives_the_new_document(
    old: dict[str, Any], new: dict[str, Any]
) -> None:
    assert apply_merge_patch(old, merge_patch(old, new)) == new


@given(docs)
def test_no_change_is_an_empty_patch(doc: dict[str, Any]) -> None:
    assert merge_patch(doc, doc) == {}
