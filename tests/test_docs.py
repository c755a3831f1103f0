"""Generated documentation stays equal to the code it describes."""

from pathlib import Path

from libs.events.catalogue import EVENT_TYPES
from libs.events.docs import render_events_doc

ROOT = Path(__file__).resolve().parent.parent


def test_events_doc_matches_the_catalogue() -> None:
    """docs/events.md is exactly what the catalogue renders (run `make docs` after a change)."""
    assert (ROOT / "docs" / "events.md").read_text() == render_events_doc()


def test_events_doc_lists_every_event_type() -> None:
    """Every event type in the catalogue has its own section."""
    text = render_events_doc()
    for cls in EVENT_TYPES:
        assert f"### `{cls.__struct_config__.tag}`" in text
